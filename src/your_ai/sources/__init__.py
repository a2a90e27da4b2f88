"""Curated sources for the Empirical Distrust objective and ``your-ai download``: the source table with each
source's priors and licence (``table``), the fetchers (``huggingface``, ``archives``), a polite HTTP client
(``http``), the resumable files and manifest (``store``) and the download itself (``download``)."""
