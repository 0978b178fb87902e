//! Checkpoints as safetensors: the model (`model.<name>`), its EMA (`ema.<name>`), AdamW's moments
//! (`adam.exp_avg.<name>`, `adam.exp_avg_sq.<name>`), and the run's configuration and counters in the header's
//! metadata. Parameter names are PyTorch's, so `model.*` is a PyTorch state dict under a prefix. A plain PyTorch
//! state dict saved as safetensors (the reference's names, no prefix) is also accepted for sampling, its sizes inferred
//! from the tensor shapes. Files are written to a temporary name and renamed, never left half-written.

use crate::backend::Backend;
use crate::diffusion::ScheduleKind;
use crate::error::{Error, Result};
use crate::nn::{UNet, UNetConfig};
use crate::params::Params;
use crate::tensor::Tensor;
use crate::tensor_file::{read_tensors, write_tensors, TensorFile};
use crate::train::{RunConfig, TrainState};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of this project's checkpoints.
const FORMAT: &str = "ddpm-checkpoint-v1";
/// The `format` metadata value of exported weights ([`save_weights`]): a plain state dict whose metadata also
/// names the schedule and what the weights are.
pub const WEIGHTS_FORMAT: &str = "ddpm-weights-v1";
/// The label embedding of a class-conditional UNet (`UNet::label`).
const LABEL_TABLE: &str = "label_emb.weight";

/// Writes `state` to `path` (atomically).
pub fn save(state: &TrainState, path: &Path) -> Result<()> {
    let mut named: Vec<(String, &Tensor)> = Vec::new();
    for (i, (name, t)) in state.params.iter().enumerate() {
        named.push((format!("model.{name}"), t));
        named.push((format!("ema.{name}"), &state.ema.shadow[i]));
        named.push((format!("adam.exp_avg.{name}"), &state.opt.exp_avg[i]));
        named.push((format!("adam.exp_avg_sq.{name}"), &state.opt.exp_avg_sq[i]));
    }
    write_tensors(path, &named, Some(metadata(state)))
}

/// `Err` naming the first tensor of `params` that holds a NaN or an infinity: weights that cannot be sampled from
/// or trained on.
pub fn check_finite<B: Backend>(params: &Params<B>) -> Result<()> {
    for (name, t) in params.iter() {
        check_values(name, &t.to_vec()?)?;
    }
    Ok(())
}

/// [`check_finite`] for everything a checkpoint holds: the weights, their EMA and AdamW's moments (on the host, so
/// read in place).
pub fn check_state_finite(state: &TrainState) -> Result<()> {
    for (i, (name, t)) in state.params.iter().enumerate() {
        check_values(name, t.data())?;
        check_values(&format!("ema.{name}"), state.ema.shadow[i].data())?;
        check_values(&format!("adam.exp_avg.{name}"), state.opt.exp_avg[i].data())?;
        check_values(&format!("adam.exp_avg_sq.{name}"), state.opt.exp_avg_sq[i].data())?;
    }
    Ok(())
}

fn check_values(name: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Diverged(format!("`{name}` holds {} at index {i}, a non-finite value", data[i]))),
        None => Ok(()),
    }
}

/// The header metadata: the run's configuration and counters, as strings, in key order (so that the same state
/// always writes the same bytes).
fn metadata(s: &TrainState) -> BTreeMap<String, String> {
    let c = &s.config;
    [
        ("format", FORMAT.to_string()),
        ("in_ch", c.model.in_ch.to_string()),
        ("base", c.model.base.to_string()),
        ("t_dim", c.model.t_dim.to_string()),
        ("classes", c.model.classes.to_string()),
        ("timesteps", c.timesteps.to_string()),
        ("schedule", c.schedule.name().to_string()),
        ("epochs", c.epochs.to_string()),
        ("batch", c.batch.to_string()),
        // `{:?}` prints the shortest string that parses back to the same f64.
        ("lr", format!("{:?}", c.lr)),
        ("ema_decay", format!("{:?}", c.ema_decay)),
        ("ema_warmup", c.ema_warmup.to_string()),
        ("seed", c.seed.to_string()),
        ("max_steps", c.max_steps.map_or("none".to_string(), |m| m.to_string())),
        ("step", s.step.to_string()),
        ("adam_step", s.opt.step.to_string()),
        ("ema_updates", s.ema.updates.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Reads a metadata field of a checkpoint.
fn field<T: std::str::FromStr>(f: &TensorFile, key: &str) -> Result<T> {
    let raw = f.metadata.get(key).ok_or_else(|| Error::file(&f.path, format!("checkpoint metadata lacks `{key}`")))?;
    raw.parse().map_err(|_| Error::file(&f.path, format!("checkpoint metadata `{key}` = {raw:?} is not valid")))
}

/// Reads a metadata field that older checkpoints lack: `None` when absent.
fn optional_field<T: std::str::FromStr>(f: &TensorFile, key: &str) -> Result<Option<T>> {
    f.metadata.get(key).map(|_| field(f, key)).transpose()
}

/// Loads a checkpoint written by [`save`] into a state that continues the run exactly.
pub fn load_train_state(path: &Path) -> Result<TrainState> {
    train_state_from(&read_tensors(path)?)
}

/// [`load_train_state`] from an already-read file.
fn train_state_from(f: &TensorFile) -> Result<TrainState> {
    let path = f.path.as_path();
    if f.metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::file(
            path,
            "not a ddpm training checkpoint (a plain state dict can be sampled from, not resumed)",
        ));
    }
    let max_steps: String = field(f, "max_steps")?;
    let config = RunConfig {
        model: UNetConfig {
            in_ch: field(f, "in_ch")?,
            base: field(f, "base")?,
            t_dim: field(f, "t_dim")?,
            // Checkpoints older than class conditioning are unconditional.
            classes: optional_field(f, "classes")?.unwrap_or(0),
        },
        timesteps: field(f, "timesteps")?,
        schedule: optional_field(f, "schedule")?.unwrap_or_default(),
        epochs: field(f, "epochs")?,
        batch: field(f, "batch")?,
        lr: field(f, "lr")?,
        ema_decay: field(f, "ema_decay")?,
        ema_warmup: field(f, "ema_warmup")?,
        seed: field(f, "seed")?,
        max_steps: if max_steps == "none" { None } else { Some(field(f, "max_steps")?) },
    };
    let what = path.display().to_string();
    config.validate().map_err(|e| Error::file(path, format!("bad configuration: {e}")))?;
    check_sizes(f, &config.model, "model.")?;
    let mut state = TrainState::new(config).map_err(|e| Error::file(path, format!("bad configuration: {e}")))?;
    state.params.load_from(&f.f32_with_prefix("model."), &what)?;
    let load_into = |prefix: &str, dst: &mut Vec<Tensor>| -> Result<()> {
        let mut tmp = state.params.clone();
        tmp.load_from(&f.f32_with_prefix(prefix), &format!("{what} ({prefix}*)"))?;
        *dst = tmp.tensors().to_vec();
        Ok(())
    };
    load_into("ema.", &mut state.ema.shadow)?;
    load_into("adam.exp_avg.", &mut state.opt.exp_avg)?;
    load_into("adam.exp_avg_sq.", &mut state.opt.exp_avg_sq)?;
    state.step = field(f, "step")?;
    state.opt.step = field(f, "adam_step")?;
    state.ema.updates = field(f, "ema_updates")?;
    Ok(state)
}

/// Checks that the file's tensors have the shapes `config` gives them, before a model of that size is built: the
/// sizes come from metadata or from one tensor's shape, and a damaged or hostile file must not make the model's
/// allocation exceed the file's own. Three weights pin the sizes: the input conv (base, in_ch), the time MLP
/// (t_dim) and a middle conv (base², the bulk of the model); a conditional model's label table pins the classes.
fn check_sizes(f: &TensorFile, config: &UNetConfig, prefix: &str) -> Result<()> {
    let UNetConfig { in_ch, base, t_dim, classes } = *config;
    let mut expect = vec![
        ("in_conv.weight", vec![base, in_ch, 3, 3]),
        ("time.mlp.0.weight", vec![t_dim.saturating_mul(4), t_dim]),
        ("mid.conv1.weight", vec![base.saturating_mul(4), base.saturating_mul(4), 3, 3]),
    ];
    if classes > 0 {
        expect.push((LABEL_TABLE, vec![classes + 1, t_dim.saturating_mul(4)]));
    }
    for (name, want) in expect {
        let name = format!("{prefix}{name}");
        let got = f.f32(&name)?.shape().to_vec();
        if got != want {
            return Err(Error::file(
                &f.path,
                format!(
                    "the model's sizes (base {base}, in_ch {in_ch}, t_dim {t_dim}, classes {classes}) call for {name} \
                     of shape {want:?}, but the file holds {got:?}; the file is damaged"
                ),
            ));
        }
    }
    Ok(())
}

/// Writes the weights of `m` (atomically) as a plain state dict under the reference's names, which PyTorch loads
/// as it is, with the schedule, T and `m.description` in the metadata, so that [`load_for_sampling`] samples
/// from it exactly as from the checkpoint it came from.
pub fn save_weights(m: &SamplingModel, path: &Path) -> Result<()> {
    let c = &m.model.config;
    let metadata: BTreeMap<String, String> = [
        ("format", WEIGHTS_FORMAT.to_string()),
        ("in_ch", c.in_ch.to_string()),
        ("base", c.base.to_string()),
        ("t_dim", c.t_dim.to_string()),
        ("classes", c.classes.to_string()),
        ("timesteps", m.timesteps.to_string()),
        ("schedule", m.schedule.name().to_string()),
        ("description", m.description.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let named: Vec<(String, &Tensor)> = m.params.iter().map(|(name, t)| (name.to_string(), t)).collect();
    write_tensors(path, &named, Some(metadata))
}

/// Weights to sample from.
pub struct SamplingModel {
    pub model: UNet,
    pub params: Params,
    /// T of the schedule the model was trained with.
    pub timesteps: usize,
    /// The schedule the model was trained with (linear for a plain state dict, as in the reference).
    pub schedule: ScheduleKind,
    /// What was loaded, for the user: "EMA weights of step 1200", "plain state dict", ...
    pub description: String,
}

/// Loads a model to sample from: a checkpoint of ours (its EMA weights unless `use_ema` is false; its schedule, and
/// linear for a checkpoint older than the field) or a plain PyTorch state dict under the reference's names (its
/// only weights; T = 1000 and the linear schedule, as in the reference).
pub fn load_for_sampling(path: &Path, use_ema: bool) -> Result<SamplingModel> {
    let f = read_tensors(path)?;
    let what = path.display().to_string();
    if f.metadata.get("format").map(String::as_str) == Some(FORMAT) {
        let state = train_state_from(&f)?;
        let (params, description) = if use_ema {
            (state.ema_params()?, format!("EMA weights after step {}", state.step))
        } else {
            (state.params, format!("live (non-EMA) weights after step {}", state.step))
        };
        let (timesteps, schedule) = (state.config.timesteps, state.config.schedule);
        let description = format!("{description}; {schedule} schedule, T = {timesteps}");
        return Ok(SamplingModel { model: state.model, params, timesteps, schedule, description });
    }
    let shape = |name: &str| -> Result<Vec<usize>> { Ok(f.f32(name)?.shape().to_vec()) };
    let (conv, time) = (shape("in_conv.weight")?, shape("time.mlp.0.weight")?);
    // A label table makes the state dict a conditional model's, of one class fewer than its rows (the null label).
    let classes = match f.f32(LABEL_TABLE) {
        Ok(t) => t.shape().first().map_or(0, |&rows| rows.saturating_sub(1)),
        Err(_) => 0,
    };
    let config = match (&conv[..], &time[..]) {
        (&[base, in_ch, 3, 3], &[_, t_dim]) => UNetConfig { in_ch, base, t_dim, classes },
        _ => {
            return Err(Error::file(
                path,
                format!("cannot infer the UNet's sizes from in_conv.weight {conv:?} and time.mlp.0.weight {time:?}"),
            ))
        }
    };
    config.validate().map_err(|e| Error::file(path, e.to_string()))?;
    check_sizes(&f, &config, "")?;
    let mut params = Params::new();
    let model =
        UNet::new(config, &mut params, &mut StdRng::seed_from_u64(0)).map_err(|e| Error::file(path, e.to_string()))?;
    params.load_from(&f.f32_with_prefix(""), &what)?;
    // Exported weights name their schedule and origin; a PyTorch state dict is the reference's linear T = 1000.
    if f.metadata.get("format").map(String::as_str) == Some(WEIGHTS_FORMAT) {
        let (timesteps, schedule): (usize, ScheduleKind) = (field(&f, "timesteps")?, field(&f, "schedule")?);
        let origin: String = field(&f, "description")?;
        let description = format!("exported {origin}");
        return Ok(SamplingModel { model, params, timesteps, schedule, description });
    }
    let description = format!(
        "plain state dict (base {}, t_dim {}, in_ch {}, classes {}); no EMA in it",
        config.base, config.t_dim, config.in_ch, config.classes
    );
    Ok(SamplingModel { model, params, timesteps: 1000, schedule: ScheduleKind::Linear, description })
}
