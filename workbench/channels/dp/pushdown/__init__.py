"""DP queries on tables that live in PostgreSQL or Spark: the bounded aggregation runs in that engine.

``compile`` builds one SQL tree (sqlglot) per query, rendered for each engine;
``expressions`` compiles the query language's filters and derived columns into it;
``postgres`` and ``spark`` run it; ``noise`` holds the OpenDP mechanisms;
``run`` is the worker's entry point and states the sensitivity of each
statistic; ``several`` answers several-statistics and moments queries; ``private_keys`` answers counts and
histograms grouped by a key without a public category list (OpenDP's thresholded Laplace);
:mod:`workbench.node.sources` reads a source's settings, credentials and the node's key.
"""
