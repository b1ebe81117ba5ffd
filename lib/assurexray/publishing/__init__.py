"""Publishing: the documents people read, built from metrics files only (never a number typed by hand).

``report_data`` reads what the report shows; ``report_sections`` builds the parts the model card and the
report share; ``model_card`` and ``report`` assemble them (markdown and self-contained HTML) through
``assurexray.core.rendering``; ``learning_curves`` draws training curves from DVCLive's files.
"""
