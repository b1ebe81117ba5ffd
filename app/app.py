"""AssureXRay demo: classify a bone radiograph and browse the pipeline's results. NOT FOR CLINICAL USE.

Start with ``assurexray app`` or ``streamlit run app/app.py`` from the project root (``ASSUREXRAY_ROOT``
names another root). Page logic lives in ``assurexray.serving.webapp``; this file only lays it out. The app keeps
no record of its users: uploads are processed and discarded, and no telemetry is sent
(``app/.streamlit/config.toml``).
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from assurexray import DISCLAIMER
from assurexray.serving import webapp

PAGES = ("Try a radiograph", "Results")
PRIVACY_NOTE = (
    "Privacy: nothing you upload is kept. A file is decoded and classified in memory, never written to disk; "
    "no names, images or results are logged or sent anywhere."
)


def main() -> None:
    """Banner and what trained each model on every view (before any number), then the view chosen in the sidebar."""
    st.set_page_config(page_title="AssureXRay (NOT FOR CLINICAL USE)", page_icon="⚠️", layout="wide")
    st.error(f"**{DISCLAIMER}**", icon="⚠️")
    st.title("AssureXRay: bone tumour radiograph classifier")
    try:
        layout = webapp.Layout(webapp.project_root())
    except FileNotFoundError as err:
        st.error(str(err))
        return
    for notice in webapp.training_notices(layout):  # read from each checkpoint's own record, never guessed
        if notice.warn:
            st.warning(notice.text, icon="⚠️")
        else:
            st.info(notice.text)
    page = st.sidebar.radio("View", PAGES, key="page")
    st.sidebar.caption(PRIVACY_NOTE)  # no server path here: the sidebar tells a visitor nothing about the host
    if page == PAGES[0]:
        try_page(layout)
    else:
        results_page(layout)


def try_page(layout: webapp.Layout) -> None:
    """Upload or pick an image, choose a model, show the prediction, decision and Grad-CAM."""
    st.header(PAGES[0])
    models = webapp.available_models(layout)
    if not models:
        st.warning(
            f"No trained model in this project's models/ folder (expected models/<variant>/model.pt for "
            f"{' or '.join(webapp.VARIANTS)}). Run the pipeline first:"
        )
        st.code(webapp.RESULTS_COMMAND, language="bash")
        return
    variant = st.selectbox("Model", models, format_func=_variant_label, key="variant")
    samples = _held_out_images(layout, variant)
    sources = ["Upload a file", "Test image"] if samples else ["Upload a file"]
    source = st.radio("Image", sources, horizontal=True, key="source")
    if not samples:
        st.caption(f"No test images of the {variant} split found ({layout.split_test(variant)} and "
                   f"{layout.samples}); `{webapp.RESULTS_COMMAND}` creates them.")
    try:
        if source == "Upload a file":
            upload = st.file_uploader(
                webapp.UPLOAD_LABEL, type=list(webapp.UPLOAD_TYPES),
                max_upload_size=webapp.MAX_UPLOAD_MB, key="upload",
            )
            if upload is None:
                st.info("Upload a radiograph to classify it.")
                return
            with st.spinner("Classifying..."):
                prediction = webapp.predict_upload(upload.name, upload.getvalue(), layout=layout, variant=variant)
        else:
            sample = st.selectbox(
                f"Test image (held out from training and threshold choice of the {variant} split)", samples,
                key="sample", format_func=webapp.Sample.title,
            )
            with st.spinner("Classifying..."):
                prediction = webapp.predict_file(sample.path, layout=layout, variant=variant)
    except (ValueError, FileNotFoundError) as err:
        st.error(f"Could not classify this file. {err}")
        return
    show_prediction(prediction, layout=layout, variant=variant)


def show_prediction(prediction: webapp.AppPrediction, *, layout: webapp.Layout, variant: str) -> None:
    """Training data, the Malignant decision and the top class (each labelled for what it is), probabilities
    (chart and table), original beside Grad-CAM at the same size, and a lesion-head model's lesion map."""
    training = webapp.training_text(prediction)
    if prediction.trained_on == "unknown" or (prediction.training_data or {}).get("synthetic"):
        st.warning(f"{training} Its outputs say nothing about real patients.", icon="⚠️")
    else:
        st.caption(training)
    warn, familiarity = webapp.input_check_text(prediction)  # before the scores it qualifies
    if warn:
        st.warning(familiarity, icon="⚠️")
    else:
        st.caption(familiarity)
    decision = webapp.decision_text(prediction, layout=layout, variant=variant)
    st.subheader(decision)
    st.subheader(webapp.top_class_text(prediction))
    threshold = webapp.threshold_text(prediction, layout=layout, variant=variant)
    if threshold:  # an unreliable threshold's caveat leads the text: shown as a warning, not small print
        (st.warning if prediction.op.caveat else st.caption)(threshold)
    left, right = st.columns(2)
    left.image(webapp.original_panel(prediction), caption=f"{prediction.name} (decoded, grayscale)",
               width="stretch")
    right.image(prediction.overlay, caption="Grad-CAM of the most probable class (colour bar: relative, "
                "min-max scaled per image)", width="stretch")
    lesion = webapp.lesion_panel(prediction)  # the map and its caption come together, or not at all
    if lesion is not None:
        image, caption = lesion
        st.columns(2)[0].image(image, caption=caption, width="stretch")
    probs = pd.DataFrame({"class": list(prediction.probs), "probability": list(prediction.probs.values())})
    chart, table = st.columns(2)
    with chart:
        bars = alt.Chart(probs).mark_bar().encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0.0, 1.0])),  # full 0-1 axis: no exaggerated gaps
            y=alt.Y("class:N", sort=None),  # checkpoint class order
            tooltip=["class", alt.Tooltip("probability:Q", format=".4f")],
        )
        st.altair_chart(bars.properties(height=200), width="stretch")
    with table:
        shown = probs.assign(probability=probs["probability"].map(lambda p: f"{p:.4f}")).set_index("class")
        st.table(shown)
    st.caption(
        f"Model: {_variant_label(variant)}, sha256 {prediction.model_sha256[:12]}, trained on "
        f"{prediction.trained_on}; probabilities temperature-scaled (T = {prediction.temperature:.3f}). "
        "Same engine as `assurexray infer`."
    )


def results_page(layout: webapp.Layout) -> None:
    """Both variants side by side from metrics/ and plots/, or what to run when they are absent."""
    st.header("Results: stratified split vs centre hold-out")
    try:
        results = webapp.load_results(layout)
    except ValueError as err:
        st.error(str(err))
        return
    message = webapp.missing_message(results)
    if message:
        (st.warning if results.any else st.info)(message)
        st.code(webapp.RESULTS_COMMAND, language="bash")
    if not results.any:
        return
    st.subheader("Headline metrics (test set: value (confidence interval); argmax = the most probable class)")
    _table(webapp.headline_rows(results), index="metric")
    if results.compare and results.compare.get("gap_method"):
        st.caption(str(results.compare["gap_method"]))
    st.subheader("Malignant operating point (threshold chosen on each variant's validation partition)")
    _table(webapp.operating_point_rows(results), index="quantity")
    for caveat in webapp.threshold_caveats(results):
        st.warning(caveat, icon="⚠️")
    st.subheader("Calibration")
    _table(webapp.calibration_rows(results), index="quantity")
    for title, paths in webapp.figure_pairs(results):
        st.subheader(title)
        wide = title in webapp.WIDE_FIGURES  # several panels each: one variant per tab, full width, readable
        places = st.tabs([_variant_label(v) for v in paths]) if wide else st.columns(len(paths))
        for place, (variant, path) in zip(places, paths.items()):
            with place:
                if path is None:
                    st.caption(f"{_variant_label(variant)}: figure not created yet (`{webapp.RESULTS_COMMAND}`).")
                else:
                    st.image(str(path), caption=_variant_label(variant), width="stretch")
    st.subheader("Grad-CAM localisation against the lesion masks")
    rows = webapp.localization_rows(results)
    if rows:
        _table(rows, index="metric")
    else:
        st.info(f"No Grad-CAM metrics yet (metrics/<variant>/explain/metrics.json); run `{webapp.RESULTS_COMMAND}`.")
    with st.expander("Grad-CAM gallery per class and outcome"):
        for tab, variant in zip(st.tabs([_variant_label(v) for v in webapp.VARIANTS]), webapp.VARIANTS):
            with tab:
                for path in webapp.gradcam_figures(results, variant):
                    st.image(str(path), caption=f"{_variant_label(variant)}: {Path(path).stem}", width="stretch")


def _table(rows: list[dict[str, str]], *, index: str) -> None:
    if rows:
        st.table(pd.DataFrame(rows).set_index(index))
    else:
        st.caption("Nothing recorded yet.")


def _held_out_images(layout: webapp.Layout, variant: str) -> list[webapp.Sample]:
    try:
        return webapp.held_out_images(layout, variant)
    except ValueError as err:
        st.warning(f"Test images unavailable: {err}")
        return []


def _variant_label(variant: str) -> str:
    return f"{webapp.VARIANT_TITLES.get(variant, variant)} ({variant})"


main()
