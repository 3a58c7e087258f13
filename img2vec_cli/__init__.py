"""The `img2vec` command (img2vec_cli.main). Apart from the library: it speaks HTTP."""
