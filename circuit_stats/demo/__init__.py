"""The bundled demo: a tiny GPT-NeoX checkpoint series in which induction heads form."""
