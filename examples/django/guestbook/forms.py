from django import forms

from .models import Entry


class EntryForm(forms.ModelForm):
    # Declared here rather than derived from the TextField: the length cap lives in the
    # form (and in the browser's maxlength), not in the schema.
    message = forms.CharField(
        max_length=Entry.MESSAGE_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 40}),
    )

    class Meta:
        model = Entry
        fields = ["name", "message"]
