"""Terminal views of what sensors see live (rich tables)."""
