"""The model catalog: every entry's status, live version and price; deploying, undeploying,
rolling back and pricing one; and trying it (images or predictions) as the signed-in admin."""

from typing import Any

import streamlit as st

from dashboard import models_data, schema_form, session, ui

CHANGED = "models.changed"  # what the last action did, shown once the page has reloaded


def changed(message: str) -> None:
    """After an action succeeded: read the catalog afresh and say what changed."""
    models_data.forget_reads()
    st.session_state[CHANGED] = message
    st.rerun()


def show_details(model: dict[str, Any]) -> None:
    # As text, not markdown: the owner wrote it (an image in it would load in the admin's browser).
    st.text(model.get("description") or "No description.")
    first, second, third = st.columns(3)
    first.metric("Status", model["status"])
    second.metric("Live version", model.get("live_version") or "—")
    third.metric("Price", models_data.price(model["pricing"]))
    if model.get("status_error"):
        st.warning(f"The last deploy failed: {model['status_error']}", icon=":material/warning:")
    st.caption(
        f"Registered model `{model['registered_model']}`, {models_data.follows(model)}; "
        f"previous version {model.get('previous_version') or '—'}."
    )
    recorded = ui.attempt(
        "Listing its versions", models_data.versions, admin.api_url, admin.key, model["name"]
    )
    if recorded:
        st.dataframe(models_data.version_rows(recorded), hide_index=True)
    elif recorded is not None:
        st.caption("The platform recorded no versions of it (it was not trained here).")


def manage(model: dict[str, Any]) -> None:
    name = model["name"]
    target = st.text_input(
        "Version or alias",
        key=f"models.{name}.target",
        help="A version number pins it; an alias (production) is followed from now on; "
        "empty deploys what the entry already names.",
    )
    deploy, undeploy, rollback = st.columns(3)
    with deploy:
        if ui.confirm("Deploy", f"models.{name}.deploy"):
            act(f"Deploying {name}", api.admin_deploy_model, name, target)
    with undeploy:
        if ui.confirm("Undeploy", f"models.{name}.undeploy", help="Its calls answer 409 after."):
            act(f"Undeploying {name}", api.admin_undeploy_model, name)
    with rollback:
        if ui.confirm("Roll back", f"models.{name}.rollback", help="Serve the previous version."):
            act(f"Rolling back {name}", api.admin_rollback_model, name)
    edit_pricing(model)


def act(what: str, call: Any, name: str, target: str | None = None) -> None:
    """Run a deploy, undeploy or rollback; what it left, or the API's problem."""
    body = models_data.deploy_request(target) if target is not None else {}
    with st.spinner(f"{what}…"):
        entry = ui.attempt(what, call, name, **body)
    if entry is None:
        models_data.forget_reads()  # a failed deploy records why in the entry
        return
    live = entry.get("live_version") or "nothing"
    changed(f"{what}: done. It is {entry['status']}, serving version {live}.")


def edit_pricing(model: dict[str, Any]) -> None:
    name, pricing = model["name"], model["pricing"]
    units = models_data.PRICING_UNITS
    with st.form(f"models.{name}.pricing"):
        st.markdown("**Edit pricing**")
        unit = st.selectbox(
            "Pricing unit",
            units,
            index=units.index(pricing["unit"]) if pricing["unit"] in units else 0,
        )
        amount = st.number_input(
            "Price per unit (credits)",
            min_value=0.0,
            value=pricing["price_micros"] / ui.MICROS,
            step=0.001,
            format="%.6f",
        )
        if st.form_submit_button("Save pricing", icon=":material/sell:"):
            new = {"unit": unit, "price_micros": ui.to_micros(amount)}
            if ui.attempt(f"Pricing {name}", api.admin_update_model, name, pricing=new):
                changed(f"{name} now costs {models_data.price(new)}.")


def try_it(model: dict[str, Any]) -> None:
    name = model["name"]
    generator = models_data.is_generator(model)
    if model["status"] != "ready":
        st.info(
            f"{name} is {model['status']}: deploy it before it answers.", icon=":material/info:"
        )
    schema, example = models_data.input_form_schema(model)
    fields = schema_form.fields(schema, example)
    with st.form(f"models.{name}.try"):
        if schema.get("description"):
            st.caption(schema["description"])
        values = schema_form.render(fields, key=f"models.{name}.input")
        submitted = st.form_submit_button(
            "Generate" if generator else "Predict",
            icon=":material/auto_awesome:" if generator else ":material/online_prediction:",
            type="primary",
        )
    if not submitted:
        return
    try:
        model_input = schema_form.collect(fields, values)
    except schema_form.SchemaFormError as exc:
        st.error(f"Fix the input: {exc}", icon=":material/edit_note:")
        return
    if generator:
        show_generation(name, model_input)
    else:
        show_prediction(model, model_input)


def show_generation(name: str, model_input: dict[str, Any]) -> None:
    with st.spinner("Generating (the answer waits up to 60 s)…"):
        job = ui.attempt(f"Generating with {name}", api.generate, name, model_input, wait=60)
    if job is None:
        return
    st.markdown(models_data.job_summary(job))
    if job["status"] == "failed":
        st.error(
            f"The job failed: {job.get('error') or 'no reason given'}", icon=":material/error:"
        )
    elif not models_data.job_ended(job):
        st.info("It has not ended yet: follow it on the Jobs page.", icon=":material/schedule:")
    images = [
        ui.attempt("Downloading an image", api.download, url) for url in models_data.image_urls(job)
    ]
    shown = [image for image in images if image is not None]
    if shown:
        st.image(shown, width=128, caption=[f"image {n + 1}" for n in range(len(shown))])


def show_prediction(model: dict[str, Any], model_input: dict[str, Any]) -> None:
    name = model["name"]
    with st.spinner("Predicting…"):
        answer = ui.attempt(f"Predicting with {name}", api.predict, name, model_input)
    if answer is None:
        return
    rows = models_data.prediction_rows(answer)
    if rows:
        st.dataframe(rows, hide_index=True)
    st.caption(f"Charged at {models_data.price(model['pricing'])}.")
    with st.expander("Outputs", icon=":material/data_object:", expanded=not rows):
        st.json(answer.get("outputs") or {})


admin = session.current()
api = session.client(admin)
st.title("Models")
if message := st.session_state.pop(CHANGED, None):
    st.success(message, icon=":material/check_circle:")
models = ui.load("Listing the models", models_data.catalog, admin.api_url, admin.key)
if not models:
    st.info("The catalog is empty: register a model first (`goshen demo` registers one).")
    st.stop()
st.dataframe(models_data.catalog_rows(models), hide_index=True)
by_name = {model["name"]: model for model in models}
selected = by_name[st.selectbox("Model", list(by_name), key="models.selected")]
st.header(selected["name"], divider="gray")
st.caption(f"{models_data.kind(selected)} · {selected['visibility']} · {selected['runtime']}")
details, manage_tab, try_tab = st.tabs(["Details", "Deploy and pricing", "Try it"])
with details:
    show_details(selected)
with manage_tab:
    manage(selected)
with try_tab:
    try_it(selected)
