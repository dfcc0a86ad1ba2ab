"""On PostgreSQL, store the PCM out of line without trying to compress it.

A bytea column's default storage (EXTENDED) runs pglz over every value above about 2 KB
before it is moved out of line. 16-bit speech repeats itself enough in its first kilobyte
(the high bytes of quiet samples) for pglz to go on through the whole value, but not
enough to come out a quarter smaller, pglz's bar: the value is compressed, then stored as
it was. That was about 4 ms for each 200 KB chunk a worker stores, three times the insert
itself (docs/benchmarks.md, P49). EXTERNAL keeps the out-of-line storage and skips the
attempt. Rows stored before keep whatever form they have; both read the same. The
ALTER TABLE takes the table's exclusive lock for a moment (docs/deployment.md). Other
databases have no such setting: nothing to do there.
"""

from django.db import migrations, router


def _set_storage(storage: str):
    def run(apps, schema_editor) -> None:
        connection = schema_editor.connection
        model = apps.get_model("tts", "AudioBlob")
        if connection.vendor != "postgresql":
            return
        if not router.allow_migrate_model(connection.alias, model):
            return  # the audio lives in another database (a project's router)
        quote = schema_editor.quote_name
        column = model._meta.get_field("pcm").column
        schema_editor.execute(
            f"ALTER TABLE {quote(model._meta.db_table)} "
            f"ALTER COLUMN {quote(column)} SET STORAGE {storage}"
        )

    return run


class Migration(migrations.Migration):
    dependencies = [("tts", "0004_replay_lookup_index")]

    operations = [
        migrations.RunPython(_set_storage("EXTERNAL"), _set_storage("EXTENDED"), elidable=False)
    ]
