"""``fastprep report``: what a prepared dataset holds, as one self-contained HTML page.

``load`` reads the dataset (manifest, memory-mapped rows, the per-document statistics of
``documents.bin``, sampled rows decoded), ``figures`` turns it into the figures' numbers
(numpy only, the JSON the tests check), ``text`` holds the decoded-text measures (script mix,
flag terms, a rendered row), ``draw`` plots them with matplotlib (the ``report`` extra), ``page``
writes the HTML, and ``build`` runs the whole report.
"""
