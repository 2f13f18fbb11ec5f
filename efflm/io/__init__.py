"""Model files: ``load`` every model spec efflm accepts (efflm directories included), ``save``
efflm directories, ``compressed_tensors`` and ``gguf_export`` the engines' formats — all through
the module registry of ``efflm.nn``, never a concrete class."""
