"""The reference node agent: identity, domains, servicer, connections."""
