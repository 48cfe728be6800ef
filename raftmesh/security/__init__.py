"""Who may call what: roles, tokens, TLS material (issue 11).

``roles`` holds the one table from gRPC method to the role it needs; the node's
interceptor (``raftmesh.node.interceptor``) is the one place it is checked.
"""
