"""The same eight faults in every supported format, on files written in that format's exact layout.

Each parse error must name the file, the 1-based line where the fault starts (for an unclosed quote: where
the quote opens) and what was expected. Where a fault cannot occur in a format (no quoting in `::` files,
no undecodable byte in latin-1, no header in GroupLens files, named keys instead of fields in JSON), the
test pins down what the format does with the same bytes. Text faults (quote, encoding) go into the file
with the titles, the others into the interactions file.

A duplicate (user, item, timestamp) is not a parse error in any format: parsers keep every line and the
raw_data stage's Great Expectations suite rejects it (tests/data/test_bad_data.py, case `duplicate`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_formats import (
    write,
    write_amazon,
    write_bx,
    write_jsonl,
    write_ml1m,
    write_ml100k,
    write_recbole_ml1m,
)

from expctr.data.formats import read_source
from expctr.data.schema import RawTables
from expctr.errors import DataFormatError

FAULTS = ("unclosed_quote", "extra_field", "non_numeric_rating", "bad_encoding_byte", "empty_file", "header_only",
          "missing_column", "duplicate")


def edit_line(path: Path, number: int, change: Callable[[bytes], bytes]) -> None:
    """Replace line `number` (1-based) of `path` by `change(line)`, keeping the file's line ends."""
    lines = path.read_bytes().split(b"\n")
    eol = b"\r" if lines[number - 1].endswith(b"\r") else b""
    lines[number - 1] = change(lines[number - 1].removesuffix(b"\r")) + eol
    path.write_bytes(b"\n".join(lines))


def keep_lines(path: Path, count: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:count]))


def duplicate_line(path: Path, number: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:number], lines[number - 1], *lines[number:]]))


def parses(fmt: str, args: dict) -> RawTables:
    return read_source(fmt, **args)


def fails(fmt: str, args: dict, *parts: str) -> DataFormatError:
    """The format's parser raises a DataFormatError whose message holds every part."""
    with pytest.raises(DataFormatError) as exc:
        read_source(fmt, **args)
    for part in parts:
        assert part in str(exc.value), f"{part!r} not in {str(exc.value)!r}"
    return exc.value


# ---------------------------------------------------------------------------------- RecBole atomic


def recbole(d: Path, fault: str) -> None:
    write_recbole_ml1m(d)
    args = {"directory": d, "name": "ml-1m"}
    inter, item = d / "ml-1m.inter", d / "ml-1m.item"
    if fault == "unclosed_quote":  # TSV without quoting: a quote is part of the value
        edit_line(item, 3, lambda line: line.replace(b"\tAm\xc3\xa9lie\t", b'\t"Am\xc3\xa9lie\t'))
        assert parses("recbole_atomic", args).items.row(1)[1] == '"Amélie'
    elif fault == "extra_field":
        edit_line(inter, 3, lambda line: line + b"\t7")
        fails("recbole_atomic", args, "ml-1m.inter, row 3", "expected 4 fields separated by '\\t'", "found 5",
              "a field too many")
    elif fault == "non_numeric_rating":
        edit_line(inter, 3, lambda line: line.replace(b"\t3.5\t", b"\tabc\t"))
        fails("recbole_atomic", args, "ml-1m.inter, row 3", "column 'rating': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":
        edit_line(item, 2, lambda line: line.replace(b"Toy Story\t", b"Toy \xffStory\t"))
        err = fails("recbole_atomic", args, "ml-1m.item, row 2", "expected utf-8 text, found byte 0xff at column 22")
        assert err.line.startswith("Toy Story (1995)\tToy ")
    elif fault == "empty_file":
        inter.write_bytes(b"")
        fails("recbole_atomic", args, "ml-1m.inter", "empty file", "expected a header")
    elif fault == "header_only":
        keep_lines(inter, 1)
        fails("recbole_atomic", args, "ml-1m.inter, row 1", "no data lines after the header",
              "user_id, item_id, rating, timestamp")
    elif fault == "missing_column":
        write(inter, ["user_id:token\titem_id:token\ttimestamp:float", "1m_1\tToy Story (1995)\t978300760"])
        fails("recbole_atomic", args, "ml-1m.inter, row 1", "lacks column(s) ['rating']")
    elif fault == "duplicate":
        duplicate_line(inter, 3)
        rows = parses("recbole_atomic", args).interactions.rows()
        assert len(rows) == 4 and rows[1] == rows[2]


# ---------------------------------------------------------------------------------- GroupLens ML-1M


def ml1m_dat(d: Path, fault: str) -> None:
    write_ml1m(d)
    args = {"directory": d}
    ratings, movies = d / "ratings.dat", d / "movies.dat"
    if fault == "unclosed_quote":  # '::' files have no quoting: the quote stays in the title
        edit_line(movies, 2, lambda line: line.replace(b"::James", b'::"James'))
        assert parses("ml1m_dat", args).items.row(1)[1:3] == ('"James and the Giant Peach', 1996)
    elif fault == "extra_field":
        edit_line(ratings, 2, lambda line: line + b"::7")
        fails("ml1m_dat", args, "ratings.dat, row 2", "expected 4 fields separated by '::'", "found 5",
              "a field too many")
    elif fault == "non_numeric_rating":
        edit_line(ratings, 2, lambda line: line.replace(b"::3::", b"::abc::"))
        fails("ml1m_dat", args, "ratings.dat, row 2", "column 'rating': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":  # latin-1 maps every byte to a character: 0xff is 'ÿ'
        edit_line(movies, 2, lambda line: line.replace(b"Giant", b"Gi\xffnt"))
        assert parses("ml1m_dat", args).items.row(1)[1] == "James and the Gi\u00ffnt Peach"
    elif fault == "empty_file":
        ratings.write_bytes(b"")
        fails("ml1m_dat", args, "ratings.dat", "empty file", "expected lines of user_id::item_id::rating::timestamp")
    elif fault == "header_only":  # the format has no header: a header line is a line of bad values
        write(ratings, ["UserID::MovieID::Rating::Timestamp"])
        fails("ml1m_dat", args, "ratings.dat, row 1", "column 'user_id': expected a numeric id, found 'UserID'",
              "this format has no header line")
    elif fault == "missing_column":  # no header to name columns: every line is a field short
        write(ratings, ["1::1193::5", "1::661::3"])
        fails("ml1m_dat", args, "ratings.dat, row 1", "expected 4 fields separated by '::'", "found 3",
              "truncated or a field is missing")
    elif fault == "duplicate":
        duplicate_line(ratings, 2)
        rows = parses("ml1m_dat", args).interactions.rows()
        assert len(rows) == 4 and rows[1] == rows[2]


# --------------------------------------------------------------------------------- GroupLens ML-100K


def ml100k(d: Path, fault: str) -> None:
    write_ml100k(d)
    args = {"directory": d}
    data, item = d / "u.data", d / "u.item"
    if fault == "unclosed_quote":  # '|' files have no quoting either
        edit_line(item, 4, lambda line: line.replace(b"|Jack", b'|"Jack'))
        assert parses("ml100k", args).items.row(3)[1] == '"Jack and Sarah'
    elif fault == "extra_field":
        edit_line(data, 2, lambda line: line + b"\t7")
        fails("ml100k", args, "u.data, row 2", "expected 4 fields separated by '\\t'", "found 5")
    elif fault == "non_numeric_rating":
        edit_line(data, 2, lambda line: line.replace(b"\t3\t", b"\tabc\t"))
        fails("ml100k", args, "u.data, row 2", "column 'rating': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":  # latin-1 again: the byte is a character
        edit_line(item, 4, lambda line: line.replace(b"Sarah", b"S\xffrah"))
        assert parses("ml100k", args).items.row(3)[1] == "Jack and S\u00ffrah"
    elif fault == "empty_file":
        data.write_bytes(b"")
        fails("ml100k", args, "u.data", "empty file", "expected lines of user_id\titem_id\trating\ttimestamp")
    elif fault == "header_only":
        write(data, ["user_id\titem_id\trating\ttimestamp"])
        fails("ml100k", args, "u.data, row 1", "expected a numeric id, found 'user_id'", "no header line")
    elif fault == "missing_column":
        write(data, ["196\t242\t3", "186\t302\t3"])
        fails("ml100k", args, "u.data, row 1", "expected 4 fields", "found 3")
    elif fault == "duplicate":
        duplicate_line(data, 2)
        rows = parses("ml100k", args).interactions.rows()
        assert len(rows) == 4 and rows[1] == rows[2]


# ------------------------------------------------------------------------------------- MovieLens CSV


ML_LATEST_MOVIES = [  # lines of ml-latest-small's movies.csv; line 11 opens a quote it never closes
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    "2,Jumanji (1995),Adventure|Children|Fantasy",
    "3,Grumpier Old Men (1995),Comedy|Romance",
    "4,Waiting to Exhale (1995),Comedy|Drama|Romance",
    "5,Father of the Bride Part II (1995),Comedy",
    "6,Heat (1995),Action|Crime|Thriller",
    "7,Sabrina (1995),Comedy|Romance",
    "8,Tom and Huck (1995),Adventure|Children",
    "9,Sudden Death (1995),Action",
    '1343,"Cape Fear (1991),Thriller',
    "10,GoldenEye (1995),Action|Adventure|Thriller",
    '11,"American President, The (1995)",Comedy|Drama|Romance',
    "12,Dracula: Dead and Loving It (1995),Comedy|Horror",
    '13,"Balto (1995)",Adventure|Animation|Children',
]


def movielens_csv(d: Path, fault: str) -> None:
    write(d / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.5,964981247",
                              "2,6,0.5,1537109082"])
    write(d / "movies.csv", [line for n, line in enumerate(ML_LATEST_MOVIES, 1) if n != 11])
    args = {"directory": d}
    ratings, movies = d / "ratings.csv", d / "movies.csv"
    if fault == "unclosed_quote":
        write(movies, ML_LATEST_MOVIES)
        err = fails("movielens_csv", args, "movies.csv, row 11", "unclosed quote", "opens at column 6",
                    "expected a closing '\"' before the end of the line")
        assert err.row == 11 and err.line == '1343,"Cape Fear (1991),Thriller'
    elif fault == "extra_field":
        edit_line(ratings, 3, lambda line: line + b",7")
        err = fails("movielens_csv", args, "ratings.csv, row 3", "expected 4 fields separated by ','", "found 5",
                    "a field too many")
        assert err.line == "1,3,4.5,964981247,7"
    elif fault == "non_numeric_rating":
        edit_line(ratings, 3, lambda line: line.replace(b",4.5,", b",abc,"))
        fails("movielens_csv", args, "ratings.csv, row 3", "column 'rating': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":
        edit_line(movies, 3, lambda line: line.replace(b"Jumanji", b"Juman\xffi"))
        err = fails("movielens_csv", args, "movies.csv, row 3", "expected utf-8 text, found byte 0xff at column 8")
        assert err.line.startswith("2,Juman")
    elif fault == "empty_file":
        ratings.write_bytes(b"")
        fails("movielens_csv", args, "ratings.csv", "empty file",
              "expected a header line userId,movieId,rating,timestamp")
    elif fault == "header_only":
        keep_lines(ratings, 1)
        fails("movielens_csv", args, "ratings.csv, row 1", "no data lines after the header",
              "userId, movieId, rating, timestamp")
    elif fault == "missing_column":
        write(ratings, ["userId,movieId,rating", "1,1,4.0"])
        fails("movielens_csv", args, "ratings.csv, row 1", "lacks column(s) ['timestamp']")
    elif fault == "duplicate":
        duplicate_line(ratings, 3)
        rows = parses("movielens_csv", args).interactions.rows()
        assert len(rows) == 4 and rows[1] == rows[2]


# ------------------------------------------------------------------------------------- Book-Crossing


def bookcrossing(d: Path, fault: str) -> None:
    write_bx(d)
    args = {"directory": d}
    ratings, books = d / "BX-Book-Ratings.csv", d / "BX-Books.csv"
    if fault == "unclosed_quote":  # the title's closing quote is missing
        edit_line(books, 2, lambda line: line.replace(b'"Classical Mythology"', b'"Classical Mythology'))
        err = fails("bookcrossing", args, "BX-Books.csv, row 2", "unclosed quote", "opens at column 14")
        assert err.line.startswith('"0195153448";"Classical Mythology;"Mark')
    elif fault == "extra_field":
        edit_line(ratings, 3, lambda line: line + b';"7"')
        fails("bookcrossing", args, "BX-Book-Ratings.csv, row 3", "expected 3 ';'-separated quoted fields",
              "found 4 fields", "a field too many")
    elif fault == "non_numeric_rating":
        edit_line(ratings, 3, lambda line: line.replace(b'"5"', b'"abc"'))
        fails("bookcrossing", args, "BX-Book-Ratings.csv, row 3",
              "column 'Book-Rating': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":  # cp1252, its undefined bytes read as latin-1: every byte decodes
        edit_line(books, 2, lambda line: line.replace(b"Mythology", b"Myth\xffogy"))
        assert parses("bookcrossing", args).items.row(0)[1] == "Classical Myth\u00ffogy"
    elif fault == "empty_file":
        ratings.write_bytes(b"")
        fails("bookcrossing", args, "BX-Book-Ratings.csv", "empty file",
              "expected a header with ['User-ID', 'ISBN', 'Book-Rating']")
    elif fault == "header_only":
        keep_lines(ratings, 1)
        fails("bookcrossing", args, "BX-Book-Ratings.csv, row 1", "no data lines after the header")
    elif fault == "missing_column":
        write(ratings, ['"User-ID";"ISBN"', '"276725";"034545104X"'], encoding="cp1252", eol="\r\n")
        fails("bookcrossing", args, "BX-Book-Ratings.csv, row 1", "unexpected header",
              "missing ['Book-Rating']")
    elif fault == "duplicate":
        duplicate_line(ratings, 3)
        rows = parses("bookcrossing", args).interactions.rows()
        assert len(rows) == 4 and rows[1] == rows[2]


# -------------------------------------------------------------------------------------------- Amazon


def amazon(d: Path, fault: str) -> None:
    write_amazon(d)
    args = {"reviews_path": d / "reviews.json", "meta_path": d / "meta.json"}
    reviews, meta = d / "reviews.json", d / "meta.json"
    if fault == "unclosed_quote":
        meta.write_text('{"asin": "B1", "title": "One, "categories": [["Books"]]}\n')
        err = fails("amazon", args, "meta.json, row 1", "not valid JSON", "a string is not closed")
        assert err.line == '{"asin": "B1", "title": "One, "categories": [["Books"]]}'
    elif fault == "extra_field":  # JSON names its fields: an extra key is ignored (the layouts vary)
        edit_line(reviews, 2, lambda line: line.replace(b"}", b', "extra": 7}'))
        assert parses("amazon", args).interactions.row(1) == ("A2", "B9", 2.0, 1353456001)
    elif fault == "non_numeric_rating":
        edit_line(reviews, 2, lambda line: line.replace(b'"overall": 2.0', b'"overall": "abc"'))
        fails("amazon", args, "reviews.json, row 2", "key 'overall': expected a number, found 'abc'")
    elif fault == "bad_encoding_byte":
        edit_line(reviews, 2, lambda line: line.replace(b'"A2"', b'"A\xff2"'))
        err = fails("amazon", args, "reviews.json, row 2", "expected utf-8 text, found byte 0xff at column 18")
        assert err.line.startswith('{"reviewerID": "A')
    elif fault == "empty_file":
        reviews.write_bytes(b"")
        fails("amazon", args, "reviews.json", "empty file; expected one JSON object per line")
    elif fault == "header_only":  # JSON lines have no header: a CSV-style header is a line that is not JSON
        reviews.write_text("reviewerID,asin,overall,unixReviewTime\n")
        fails("amazon", args, "reviews.json, row 1", "not valid JSON", "expected one JSON object per line")
    elif fault == "missing_column":
        write_jsonl(reviews, [{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1353456000}])
        fails("amazon", args, "reviews.json, row 1", "missing key 'overall' or 'rating'")
    elif fault == "duplicate":
        duplicate_line(reviews, 2)
        rows = parses("amazon", args).interactions.rows()
        assert len(rows) == 5 and rows[1] == rows[2]


FORMATS = {"recbole_atomic": recbole, "ml1m_dat": ml1m_dat, "ml100k": ml100k, "movielens_csv": movielens_csv,
           "bookcrossing": bookcrossing, "amazon": amazon}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fault(tmp_path: Path, fmt: str, fault: str) -> None:
    FORMATS[fmt](tmp_path, fault)


def test_every_supported_format_is_covered() -> None:
    from expctr.data.formats import FORMATS as SUPPORTED

    assert set(FORMATS) == set(SUPPORTED)


@pytest.mark.parametrize("batch_bytes", [1, 64, 1 << 20])
def test_unclosed_quote_is_found_in_whichever_block_it_falls(tmp_path: Path, batch_bytes: int) -> None:
    """The raw_data stage reads ratings.csv in blocks: the quote's line is named whatever the block size,
    with quoted fields before and after it (quoting ids is valid CSV)."""
    from expctr.data.formats import stream_source

    lines = ["userId,movieId,rating,timestamp", *(f'"{u}","{u}",4.0,96498270{u % 10}' for u in range(1, 20))]
    lines[10] = '11,"12,4.0,964982701'  # line 11
    write(tmp_path / "ratings.csv", lines)
    write(tmp_path / "movies.csv", ML_LATEST_MOVIES[:2])
    with pytest.raises(DataFormatError) as exc:
        list(stream_source("movielens_csv", batch_bytes=batch_bytes, directory=tmp_path).batches)
    assert exc.value.row == 11 and "unclosed quote" in str(exc.value) and "column 4" in str(exc.value)
    assert exc.value.line == lines[10]
