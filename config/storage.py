from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed static files, with the player's ES module imports rewritten to
    the hashed names too, so a deploy never mixes old and new modules."""

    support_js_module_import_aggregation = True
