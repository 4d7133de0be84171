"""The text side: reading, checking and grouping the annotation parquet, and the text grammars."""
