"""The DP query language on public metadata: expression typing, SQL compiled to queries, readable text and validation.

The client checks a question with it before any request; the node checks it again before any charge.
Nothing here reads data.
"""
