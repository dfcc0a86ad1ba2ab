"""Hot queries whose SQL the ORM builds once per database, then runs with new values.

Building a queryset and compiling it to SQL is pure Python, and on a session's way to
its first audio it costs more than running the query: on an idle core about 1 ms for
the POST's replay lookup (a join through a subquery) and 0.5 ms for a worker's claim,
where SQLite answers either in 0.05 ms; on two busy cores, two to three times that
(docs/benchmarks.md, P45). A ``Compiled`` query asks the ORM once per database alias,
with stand-in values, and keeps the SQL, its parameters (the stand-ins located among
them) and the result converters. Each call prepares its own values as the ORM would
(the field's ``get_db_prep_value``), puts them where the stand-ins were, and runs that
SQL; the rows come back converted as the ORM converts them.

Only for queries whose SQL does not depend on the values: no ``__in`` list of varying
length (one ``Compiled`` per length will do), no ``None`` (which the ORM turns into
``IS NULL``; refused here), no value that chooses an expression. Every named value must
be a parameter of the SQL: the first call fails loudly when a stand-in cannot be found
there.

    claim = Compiled.update_returning(
        lambda session_id, now: (
            TTSSession.objects.filter(pk=session_id, status="queued"),
            {"status": "running", "heartbeat_at": now},
        ),
        session_id=TTSSession._meta.pk,
        now=TTSSession._meta.get_field("heartbeat_at"),
    )
    sessions = claim.run(session_id=some_id, now=timezone.now())
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models, router
from django.db.models import sql

_serial = itertools.count(1)


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: list
    slots: dict[str, list[int]]  # value name -> the positions of its parameter
    converters: dict[int, tuple[list, Any]]  # column -> (converters, expression)
    model: type[models.Model] | None  # rows become its instances (update_returning)
    attnames: list[str]
    count_only: bool = False  # run returns the number of rows changed (update)


_every: weakref.WeakSet[Compiled] = weakref.WeakSet()
_every_lock = threading.Lock()  # a query made on one thread while another lists them


def every_query() -> list[Compiled]:
    """Every ``Compiled`` query this process has made (``tts.warmup`` compiles them at
    start)."""
    with _every_lock:
        return list(_every)


class Compiled:
    """See the module's docstring. Build with ``values_list``, ``instances`` or
    ``update_returning``."""

    def __init__(
        self,
        compile_: Callable[[str, Any], _Statement],  # (alias, what build returned)
        build: Callable[..., Any],
        fields: dict[str, models.Field],
    ) -> None:
        self._compile, self._build, self._fields = compile_, build, fields
        self._statements: dict[str, _Statement] = {}
        self._lock = threading.Lock()
        self._model: type[models.Model] | None = None  # the query's, once known
        with _every_lock:
            _every.add(self)

    @classmethod
    def values_list(cls, build: Callable[..., models.QuerySet], **fields: models.Field):
        """``build(**values)`` returns a ``values_list`` queryset; ``run`` returns its
        rows as tuples."""
        return cls(_compile_select, build, fields)

    @classmethod
    def instances(cls, build: Callable[..., models.QuerySet], **fields: models.Field):
        """``build(**values)`` returns a queryset of a model's rows, all their fields (no
        ``only``, ``defer`` or ``select_related``); ``run`` returns them as instances."""
        return cls(_compile_instances, build, fields)

    @classmethod
    def update(
        cls,
        build: Callable[..., tuple[models.QuerySet, dict[str, Any]]],
        **fields: models.Field,
    ):
        """``build(**values)`` returns ``(queryset, values to set)``; ``run`` updates the
        queryset's rows and returns how many there were, as ``QuerySet.update`` does."""
        return cls(_compile_update, build, fields)

    @classmethod
    def update_returning(
        cls,
        build: Callable[..., tuple[models.QuerySet, dict[str, Any]]],
        **fields: models.Field,
    ):
        """``build(**values)`` returns ``(queryset, values to set)``; ``run`` updates the
        queryset's rows and returns them as they now are (model instances), in one
        statement: UPDATE ... RETURNING (SQLite 3.35+ and PostgreSQL)."""
        return cls(_compile_update_returning, build, fields)

    def run(self, *, using: str | None = None, **values: Any) -> list:
        """The query's rows for these values, on ``using`` (by default the database the
        ORM would use: the routers' choice for the query's model)."""
        if values.keys() != self._fields.keys():
            raise TypeError(f"expected the values {sorted(self._fields)}, got {sorted(values)}")
        using = using or self._routed()
        statement = self._statement(using)
        connection = connections[using]
        params = list(statement.params)
        for name, value in values.items():
            if value is None:
                raise ValueError(f"{name} is None: the compiled SQL compares it with =")
            prepared = self._fields[name].get_db_prep_value(value, connection)
            for position in statement.slots[name]:
                params[position] = prepared
        return _execute(statement, params, using)

    def prepare(self, *, using: str | None = None) -> None:
        """Compile the SQL now, for ``using`` (by default the routers' choice), so that
        the first ``run`` does not."""
        self._statement(using or self._routed())

    def _routed(self) -> str:
        model = self._model
        if model is None:  # built once with stand-ins, only to learn the model
            connection = connections[DEFAULT_DB_ALIAS]
            built = self._build(
                **{name: _standin(name, field, connection) for name, field in self._fields.items()}
            )
            model = self._model = (built[0] if isinstance(built, tuple) else built).model
        if self._compile in (_compile_update, _compile_update_returning):
            return router.db_for_write(model)
        return router.db_for_read(model)

    def _statement(self, using: str) -> _Statement:
        statement = self._statements.get(using)
        if statement is None:
            with self._lock:
                statement = self._statements.get(using)
                if statement is None:
                    statement = self._statements[using] = self._compiled(using)
        return statement

    def _compiled(self, using: str) -> _Statement:
        connection = connections[using]
        standins = {name: _standin(name, field, connection) for name, field in self._fields.items()}
        statement = self._compile(using, self._build(**standins))
        slots: dict[str, list[int]] = {}
        for name, standin in standins.items():
            prepared = self._fields[name].get_db_prep_value(standin, connection)
            slots[name] = [i for i, p in enumerate(statement.params) if _same(p, prepared)]
            if not slots[name]:
                raise ValueError(
                    f"{name} is not a parameter of the compiled SQL (prepared as "
                    f"{prepared!r}): {statement.sql}"
                )
        return dataclasses.replace(statement, slots=slots)


def insert(objs: Sequence[models.Model], *, using: str | None = None) -> None:
    """``bulk_create(objs)`` for new rows of one model whose primary key the database
    chooses, as ``INSERT ... VALUES`` statements put together here: the ORM's insert
    compiler costs more Python than the statement costs SQLite (a worker stores its chunks
    this way, several times a second). Each value goes through its field's ``pre_save``
    and ``get_db_prep_save``, as the ORM's do; rows go in batches as large as the database
    takes (one statement for a few rows), as ``bulk_create``'s; a row that breaks a
    constraint raises IntegrityError. The primary keys are not read back."""
    if not objs:
        return
    model = type(objs[0])
    if any(type(obj) is not model for obj in objs):
        raise TypeError("rows of one model only")
    opts = model._meta
    fields = [field for field in opts.concrete_fields if field is not opts.auto_field]
    using = using or router.db_for_write(model)
    connection = connections[using]
    quote = connection.ops.quote_name
    into = f"INSERT INTO {quote(opts.db_table)} ({', '.join(quote(f.column) for f in fields)})"
    row = f"({', '.join(['%s'] * len(fields))})"
    size = connection.ops.bulk_batch_size(fields, objs) or len(objs)
    with connection.cursor() as cursor:
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            params = [
                field.get_db_prep_save(field.pre_save(obj, True), connection)
                for obj in batch
                for field in fields
            ]
            cursor.execute(f"{into} VALUES {', '.join([row] * len(batch))}", params)


def update_returning(queryset: models.QuerySet, values: dict[str, Any]) -> list:
    """``queryset.update(**values)``, returning the updated rows as they now are, compiled
    for this call only (``TTSSessionQuerySet.update_returning``)."""
    statement = _compile_update_returning(queryset.db, (queryset, values))
    if not statement.sql:
        return []
    return _execute(statement, statement.params, queryset.db)


def _execute(statement: _Statement, params: list, using: str) -> list | int:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        if statement.count_only:
            return cursor.rowcount
        rows = cursor.fetchall()
    rows = [_converted(row, statement.converters, connection) for row in rows]
    if statement.model is None:
        return rows
    return [statement.model.from_db(using, statement.attnames, row) for row in rows]


def _same(param: Any, prepared: Any) -> bool:
    return type(param) is type(prepared) and param == prepared


def _standin(name: str, field: models.Field, connection) -> Any:
    """A value of the field's kind that nothing else in a query would hold."""
    serial = next(_serial)
    if field.is_relation:  # a foreign key's value is its target's
        field = field.target_field
    if isinstance(field, models.UUIDField):
        return uuid.uuid4()
    if isinstance(field, models.DateTimeField):
        moment = datetime.datetime(1901, 1, 1, tzinfo=datetime.UTC)
        return moment + datetime.timedelta(seconds=serial, microseconds=serial % 999_983 + 1)
    if isinstance(field, models.IntegerField):
        # Inside the column's range: the ORM drops or empties a comparison with a value
        # outside it (seq > -10**15 is always true), and the stand-in would vanish.
        _, high = connection.ops.integer_field_range(field.get_internal_type())
        return (high if high is not None else 2**31 - 1) - serial
    if isinstance(field, models.CharField | models.TextField):
        return f"\ue000{name}:{serial}:{uuid.uuid4().hex}\ue000"
    raise TypeError(f"no stand-in for a {type(field).__name__} ({name})")


def _converted(row: tuple, converters: dict[int, tuple[list, Any]], connection) -> tuple:
    if not converters:
        return row
    row = list(row)
    for position, (functions, expression) in converters.items():
        value = row[position]
        for function in functions:
            value = function(value, expression, connection)
        row[position] = value
    return tuple(row)


def _compile_select(using: str, queryset: models.QuerySet) -> _Statement:
    compiler = queryset.query.get_compiler(using)
    statement, params = compiler.as_sql()
    columns = [select[0] for select in compiler.select[: compiler.col_count]]
    return _Statement(
        sql=statement,
        params=list(params),
        slots={},
        converters=compiler.get_converters(columns),
        model=None,
        attnames=[],
    )


def _compile_instances(using: str, queryset: models.QuerySet) -> _Statement:
    fields = queryset.model._meta.concrete_fields
    attnames = [field.attname for field in fields]
    statement = _compile_select(using, queryset.values_list(*attnames))
    return dataclasses.replace(statement, model=queryset.model, attnames=attnames)


def _update_sql(using: str, built: tuple[models.QuerySet, dict[str, Any]]) -> tuple[str, list]:
    queryset, values = built
    query = queryset.query.chain(sql.UpdateQuery)
    query.add_update_values(values)
    compiler = query.get_compiler(using)
    compiler.pre_sql_setup()
    statement, params = compiler.as_sql()
    return statement, list(params)


def _compile_update(using: str, built: tuple[models.QuerySet, dict[str, Any]]) -> _Statement:
    statement, params = _update_sql(using, built)
    if not statement:  # nothing to set: the ORM runs no query either
        raise ValueError("an update with nothing to set")
    return _Statement(statement, params, {}, {}, None, [], count_only=True)


def _compile_update_returning(
    using: str, built: tuple[models.QuerySet, dict[str, Any]]
) -> _Statement:
    model = built[0].model
    statement, params = _update_sql(using, built)
    if not statement:  # nothing to set
        return _Statement("", [], {}, {}, model, [])
    connection = connections[using]
    fields = model._meta.concrete_fields
    table, quote = model._meta.db_table, connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    reader = connection.ops.compiler("SQLCompiler")(sql.Query(model), connection, using)
    return _Statement(
        sql=f"{statement} RETURNING {columns}",
        params=params,
        slots={},
        converters=reader.get_converters([field.get_col(table) for field in fields]),
        model=model,
        attnames=[field.attname for field in fields],
    )
