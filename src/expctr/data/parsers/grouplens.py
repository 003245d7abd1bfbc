"""GroupLens MovieLens files without quoting or header: ML-1M `.dat` ('::') and ML-100K `u.*`.

Both are latin-1, which maps every byte to a character, so no byte of these files is undecodable; a
quote is an ordinary character of a title.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from expctr.data.parsers.reader import BATCH_BYTES, LINE, RAW, delimited_batches, fail, peeked, read_delimited
from expctr.data.parsers.values import genre_list, stream, title_and_year, typed, year
from expctr.data.schema import RawStream, RawTables

# u.item's 19 genre flags, in file order
# fmt: off
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# fmt: on
_RATING_NAMES = ["user_id", "item_id", "rating", "timestamp"]
_RATING_KINDS = {"user_id": "id", "item_id": "id", "rating": "float", "timestamp": "int"}


def stream_ml1m_dat(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """GroupLens ML-1M `ratings.dat`, `movies.dat`, `users.dat` ('::'-separated, latin-1, no header).

    The year is split off the title ('Toy Story (1995)' -> 'Toy Story', 1995); genres are '|'-separated.
    """
    base = Path(directory)
    ratings_path, movies_path, users_path = base / "ratings.dat", base / "movies.dat", base / "users.dat"
    ratings = peeked(
        typed(ratings_path, df, _RATING_KINDS, headerless=True)
        for df in delimited_batches(ratings_path, "::", _RATING_NAMES, "latin-1", batch_bytes)
    )
    movies = typed(
        movies_path,
        read_delimited(movies_path, "::", ["item_id", "title", "genres"], "latin-1"),
        {"item_id": "id"},
        headerless=True,
    )
    title, release = title_and_year(pl.col("title"))
    items = movies.select(
        "item_id",
        title.alias("title"),
        release.alias("year"),
        genre_list(pl.col("genres"), r"[^|]+").alias("genres"),
    )
    names = ["user_id", "gender", "age", "occupation", "zip"]
    users = typed(
        users_path,
        read_delimited(users_path, "::", names, "latin-1"),
        {"user_id": "id", "age": "int"},
        optional=("age",),
        headerless=True,
    )
    return stream(ratings, items, users)


def read_ml1m_dat(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_ml1m_dat`, collected in memory."""
    return stream_ml1m_dat(directory).collect()


def stream_ml100k(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """GroupLens ML-100K `u.data` (tab-separated), `u.item` and `u.user` ('|'-separated, latin-1).

    `u.item` has 19 0/1 genre flags; the 'unknown' flag maps to no genre (an empty list), as the contract
    says for unknown genres. The year comes from the title, else from the release date.
    """
    base = Path(directory)
    data_path, item_path, user_path = base / "u.data", base / "u.item", base / "u.user"
    ratings = peeked(
        typed(data_path, df, _RATING_KINDS, headerless=True)
        for df in delimited_batches(data_path, "\t", _RATING_NAMES, "latin-1", batch_bytes)
    )
    items = _ml100k_items(item_path)
    users = read_delimited(user_path, "|", ["user_id", "age", "gender", "occupation", "zip"], "latin-1")
    users = typed(user_path, users, {"user_id": "id", "age": "int"}, optional=("age",), headerless=True)
    return stream(ratings, items, users)


def read_ml100k(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_ml100k`, collected in memory."""
    return stream_ml100k(directory).collect()


def _ml100k_items(path: Path) -> pl.DataFrame:
    """`id|title (year)|release date|video release date|IMDb URL|` then the 19 genre flags."""
    names = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    df = typed(path, read_delimited(path, "|", names, "latin-1"), {"item_id": "id"}, headerless=True)
    bad = df.filter(pl.any_horizontal(~pl.col(g).str.strip_chars().is_in(["0", "1"]) for g in ML100K_GENRES))
    if not bad.is_empty():
        raise fail(path, "expected 19 genre flags that are each 0 or 1", bad.item(0, LINE), bad.item(0, RAW))
    flags = [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)) for g in ML100K_GENRES[1:]]
    title, title_year = title_and_year(pl.col("title"))
    release_year = year(pl.col("release_date").str.extract(r"(\d{4})\s*$", 1))
    return df.select(
        "item_id",
        title.alias("title"),
        pl.coalesce(title_year, release_year).alias("year"),
        pl.concat_list(flags).list.drop_nulls().alias("genres"),
    )
