"""multi2vec-clip's models, on torch: one module per family (clip.py, siglip.py, openclip.py,
sentence_transformers.py) behind registry.py, and the towers' shared machinery (towers.py:
engines, text bands, batch invariance, warm-up). `python -m img2vec.models.clip NAME|DIR`
fetches (once) and checks a model (__main__.py)."""
