"""Test doubles for the pack: a loopback implementation of the hosted API and real media files.

Import the submodules directly (`hunyuancustom.testing.fake_api`, `hunyuancustom.testing.media`).
Nothing is imported here so that `python -m hunyuancustom.testing.fake_api` runs without runpy's
"found in sys.modules" warning and the runtime pack never pulls these modules in.
"""
