"""Analysis of recorded runs: pandas tables in (rows of runs.parquet), matplotlib figures and tables out."""
