"""Data: GLUE loading and tokenisation (`glue`), and the GLUE metrics (`metrics`)."""
