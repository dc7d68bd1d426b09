"""The default run outside a checkout: `python -m keras_cskd.train` with no
--config where ./configs/digits_cskd.py does not exist (an installed wheel).

It is configs/digits_cskd.py's run (tests/test_wheel.py checks the two are
equal): the digits MLP distilled from the CNN shipped beside this file
(`keras_cskd.files.shipped` finds it) with CSKD + CSWT.
"""

from keras_cskd.config import default_config


def get_config():
    return default_config()
