"""Serving: a trained model in users' hands, outside the pipeline.

``cli`` is the ``assurexray`` command; ``infer`` scores files through the prediction engine (``infer_output``
shows and writes the results); ``webapp`` is the page logic of the Streamlit demo, kept free of Streamlit.
NOT FOR CLINICAL USE.
"""
