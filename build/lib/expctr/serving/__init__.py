"""Serving the final model pair (ExpCTR-Aug + the explainer) without any web framework.

`schemas` (request/response models), `requests` (bytes -> validated request, typed errors), `bundle`
(the packaged artifacts on disk), `predictor` (scoring, explanations, the faithfulness guard) and
`cache` are plain library code: `bento/` wraps them in a BentoML service, tests call them directly.
"""
