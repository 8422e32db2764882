"""Model families of lape_hf, one folder each, laid out like transformers' `models/<name>/`."""
