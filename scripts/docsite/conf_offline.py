"""Sphinx settings `make docs` appends to the conf.py `antsibull-docs sphinx-init` writes.

The docsite is built offline (CI reaches PyPI and Debian mirrors only), so intersphinx
cannot fetch docs.ansible.com's inventory: the mapping sphinx-init writes is emptied, and
the few references the pages make into Ansible's documentation (modules of other
collections in seealso and M(), and the labels antsibull-docs' templates use) are linked
here, to the page intersphinx would have linked them to. Any other reference that does not
resolve is still a warning, and `make docs` fails on it.
"""
import re

from docutils import nodes

# Where sphinx-init's 'ansible_devel' intersphinx entry points.
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"

# No inventory to fetch: intersphinx does nothing.
intersphinx_mapping = {}

# Labels of Ansible's documentation that antsibull-docs' page templates refer to: the
# page, its title.
_ANSIBLE_LABELS = {
    "common_return_values": (
        "reference_appendices/common_return_values.html#common-return-values", "Return Values"),
    "ansible_configuration_settings": (
        "reference_appendices/config.html#ansible-configuration-settings",
        "Ansible Configuration Settings"),
    # "This module has a corresponding action plugin." (a module with an action plugin)
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
}

# A plugin's or role's page in another collection: ansible_collections.<ns>.<name>.<plugin>_<type>.
_PLUGIN_PAGE = re.compile(
    r"ansible_collections\.([a-z0-9_]+)\.([a-z0-9_]+)\.([a-z0-9_]+)_"
    r"(module|role|action|become|cache|callback|cliconf|connection|filter|httpapi|inventory"
    r"|lookup|netconf|shell|strategy|test|vars)$")
_THIS_COLLECTION = ("pydeploy", "web")


def _link_to_ansible_docs(_app, _env, node, contnode):
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    target = node["reftarget"]
    match = _PLUGIN_PAGE.match(target)
    if match and match.group(1, 2) != _THIS_COLLECTION:
        path = "collections/%s/%s/%s_%s.html" % match.group(1, 2, 3, 4)
        title = "%s.%s.%s %s" % match.group(1, 2, 3, 4)
    elif target in _ANSIBLE_LABELS:
        path, title = _ANSIBLE_LABELS[target]
    else:
        return None
    ref = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + path,
                          reftitle="(in Ansible's documentation)")
    if not node.get("refexplicit"):  # the page's title, as intersphinx writes it for :ref:
        contnode = contnode.__class__(title, title, classes=contnode.get("classes", []))
    ref.append(contnode)
    return ref


def setup(app):
    app.connect("missing-reference", _link_to_ansible_docs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
