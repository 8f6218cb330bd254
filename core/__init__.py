"""The shared vocabulary of the server: errors, object storage, durable-file helpers, metric
definitions, and the record and parameter types that cross process boundaries.

It imports neither `serve_app` nor `deployments` (both import it), and nothing heavy at
import time: no torch, no hnswlib, no SQLModel, no boto3 (the S3 store imports it when made).
"""
