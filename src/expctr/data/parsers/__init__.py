"""Parsers of public dataset file formats into the normalised tables of `expctr.data.schema`.

`reader` cuts files into blocks of whole lines and turns bad lines into `DataFormatError`s, `values` types
text columns, and one module per format family (`recbole`, `grouplens`, `movielens_csv`, `bookcrossing`,
`amazon`) reads its files; `expctr.data.formats` is the registry that picks one by name.
"""
