"""milterd's own content classifier: tokens of a message, learned counts, a probability.

Pure code, no I/O: :mod:`.tokenizer` turns a message into a set of token
hashes, :mod:`.classifier` turns learned counts into a spam probability and a
``BAYES_*`` bucket.  The counts live in the SQL store
(:mod:`milterd.store.learner`); the check is :mod:`milterd.checks.bayes`.
"""
