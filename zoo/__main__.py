"""``python -m zoo``: print the registered optimizers as a Markdown table."""
from . import registry

print(registry.markdown_table())
