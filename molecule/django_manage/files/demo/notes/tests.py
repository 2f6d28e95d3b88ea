import os

from django.test import TestCase

from notes.models import Note
from tags.models import Tag


class NoteTests(TestCase):
    def test_a_note_carries_its_tags(self):
        note = Note.objects.create(title="Deploy")
        note.tags.add(Tag.objects.create(name="ops"))
        self.assertEqual([t.name for t in note.tags.all()], ["ops"])

    def test_the_suite_can_be_made_to_fail(self):
        # The Molecule scenario sets DEMO_FAIL_A_TEST to see a failing suite reported.
        self.assertNotEqual(os.environ.get("DEMO_FAIL_A_TEST"), "yes", "failing on purpose (DEMO_FAIL_A_TEST)")
