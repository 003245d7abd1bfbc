"""Serving the final model pair (the ID model, ExpCTR-Aug and the explainer) without any web framework.

`schemas` (request/response models), `requests` and `guard` (bytes -> validated request, typed errors for
everything), `bundle` and `catalogue` (the packaged artifacts, on disk and in memory), `lookup`, `features`,
`id_scoring`, `explaining`, `aug_scoring` and `responses` (one job each), tied together by `predictor`, plus
`cache`, `batcher`, `checks` and `prompt`, are plain library code: `bento/` wraps them in a BentoML service,
tests call them directly.
"""
