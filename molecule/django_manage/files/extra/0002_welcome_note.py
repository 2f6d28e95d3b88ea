"""A data migration the Molecule tests add to the project to have exactly one pending
migration: it writes a row, so a check-mode run that applied it would be seen."""
from django.db import migrations


def create(apps, schema_editor):
    apps.get_model("notes", "Note").objects.using(schema_editor.connection.alias).create(title="Welcome")


def remove(apps, schema_editor):
    apps.get_model("notes", "Note").objects.using(schema_editor.connection.alias).filter(title="Welcome").delete()


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]

    operations = [migrations.RunPython(create, remove)]
