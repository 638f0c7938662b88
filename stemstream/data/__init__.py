"""Multitrack data: synthetic corpus, Slakh2100 reader, A.1 window/pair selection, datasets."""
