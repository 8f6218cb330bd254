"""Ray Serve deployments: one module per model, each a thin shell over a plain wrapper.

The public methods of the deployment classes are the Python handle API; the request and
response types they take and return live in `core.types`.
"""
