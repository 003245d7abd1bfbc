"""ExpCTR: explainable CTR prediction via LLM reasoning (WSDM 2025) as a library.

The library holds every computation; `orchestration/` (Dagster) and `bento/` (BentoML) are thin layers
over it and nothing here imports them.
"""

__version__ = "0.1.0"
