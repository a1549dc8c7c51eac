"""The SQL that differs between DuckDB and PostgreSQL, in one place.

The store's statements are written once, in the SQL both databases share (``?`` placeholders;
:mod:`store.pg` translates them for psycopg). Where the two differ, a module asks its store's
:class:`Dialect` for the fragment instead of spelling it: metadata is a ``VARCHAR`` of JSON plus a
``meta_pairs`` list on DuckDB, a ``jsonb`` column with a GIN index on PostgreSQL; "one of these
values" is ``IN (SELECT unnest(?))`` on DuckDB and ``= ANY(?)`` on PostgreSQL. Each method returns
SQL text with ``?`` placeholders and says which parameters it binds; no value is ever put into SQL.
"""

from __future__ import annotations

from typing import Any

import orjson


class Dialect:
    """DuckDB's spelling (the default: the embedded store)."""

    name = "duckdb"

    def metadata_has(self, a: str, key: str, value: str) -> tuple[str, list[Any]]:
        """Captures whose metadata holds the pair ``key: value`` (``a`` is the table's alias and a
        dot, or empty). DuckDB tests the row's ``meta_pairs`` list (see store/completions.py)."""
        return f"list_contains({a}meta_pairs, json_array(?, ?)::VARCHAR)", [key, value]

    def in_list(self, col: str) -> str:
        """``col`` is one of the values of a list bound as one parameter."""
        return f"{col} IN (SELECT unnest(?))"

    def arg_max(self, col: str, by: str, where: str | None = None) -> str:
        """An aggregate: ``col`` of the row with the greatest ``by`` (among rows where ``where``)."""
        return f"arg_max({col}, {by})" + (f" FILTER (WHERE {where})" if where else "")

    def quantile(self, col: str, q: float) -> str:
        """The continuous (interpolated) ``q`` quantile of ``col``, an aggregate."""
        return f"quantile_cont({col}, {float(q)!r})"

    def json_text(self, col: str, key: str) -> str:
        """The top-level field ``key`` (a literal identifier, never a value) of the JSON text in
        ``col``, as text (NULL where absent)."""
        return f"json_extract_string({col}, '$.{key}')"


class PostgresDialect(Dialect):
    """PostgreSQL's spelling: ``jsonb`` containment (``@>``) on the metadata, served by the GIN
    index of migration 1's PostgreSQL variant."""

    name = "postgresql"

    def metadata_has(self, a: str, key: str, value: str) -> tuple[str, list[Any]]:
        # DuckDB compares values as strings (it reads metadata as MAP(VARCHAR, VARCHAR)), so an
        # imported {"n": 3} matches n=3: a value that reads as a JSON number, true, false or null
        # also matches that scalar. Both forms are containment tests, which the index serves.
        forms = [orjson.dumps({key: value}).decode()]
        try:
            scalar = orjson.loads(value)
        except orjson.JSONDecodeError:
            scalar = ""
        if scalar is None or isinstance(scalar, (bool, int, float)):
            forms.append(orjson.dumps({key: scalar}).decode())
        return "(" + " OR ".join(f"{a}metadata @> ?::jsonb" for _ in forms) + ")", forms

    def in_list(self, col: str) -> str:
        return f"{col} = ANY(?)"

    def arg_max(self, col: str, by: str, where: str | None = None) -> str:
        flt = f" FILTER (WHERE {where})" if where else ""
        return f"(array_agg({col} ORDER BY {by} DESC){flt})[1]"

    def quantile(self, col: str, q: float) -> str:
        return f"percentile_cont({float(q)!r}) WITHIN GROUP (ORDER BY {col})"

    def json_text(self, col: str, key: str) -> str:
        return f"(({col})::jsonb ->> '{key}')"


DUCKDB = Dialect()
POSTGRESQL = PostgresDialect()
