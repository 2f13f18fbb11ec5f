"""Data that methods and measurements read: ``text`` the evaluation and calibration splits
(and any UTF-8 text file) · ``calib_file`` your own calibration data (``--calib``: .txt, or
.jsonl text or chat rows) · ``finetune`` fine-tuning data (built-in tasks, JSONL rows, chat
encoding) · ``jsonl`` the data commands' rows, streamed and written atomically · ``embed`` text
encoders (MiniLM, else TF-IDF). The data *methods* (selection, dedup, ...) are
``efflm.data_methods``."""
