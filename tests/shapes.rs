//! Wrong shapes at the public API are `Err`s with a message, not panics.

use ddpm::autograd::Tape;
use ddpm::nn::{Classifier, UNet, UNetConfig};
use ddpm::ops::conv::{ChanBias, ConvExtra};
use ddpm::params::Params;
use ddpm::{Error, Tensor};
use rand::{rngs::StdRng, SeedableRng};

fn shape_error<T: std::fmt::Debug>(r: ddpm::Result<T>, needle: &str) {
    match r {
        Err(Error::Shape(msg)) => assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn tensor_length_must_match_shape() {
    shape_error(Tensor::new(&[2, 3], vec![0.0; 5]), "needs 6 values");
    shape_error(Tensor::zeros(&[6]).reshape(&[4]), "needs 4 values");
}

#[test]
fn op_shape_mismatches_are_errors() {
    let params = Params::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::zeros(&[2, 3, 5, 5]));
    let w_bad = t.input(Tensor::zeros(&[4, 2, 3, 3]));
    shape_error(t.conv2d(x, w_bad, None, 1, 1, ConvExtra::default()), "does not fit");
    let w = t.input(Tensor::zeros(&[4, 3, 3, 3]));
    let b_bad = t.input(Tensor::zeros(&[5]));
    shape_error(t.conv2d(x, w, Some(b_bad), 1, 1, ConvExtra::default()), "conv2d bias");
    let big = t.input(Tensor::zeros(&[4, 3, 7, 7]));
    shape_error(t.conv2d(x, big, None, 1, 0, ConvExtra::default()), "does not fit a 5x5 input");
    let cb = t.input(Tensor::zeros(&[3, 4]));
    let with_cb = |var, start| ConvExtra { chan_bias: Some(ChanBias { var, start }), residual: None, operand: false };
    shape_error(t.conv2d(x, w, None, 1, 1, with_cb(cb, 0)), "channel bias");
    // Columns past the value's last.
    let wide = t.input(Tensor::zeros(&[2, 6]));
    shape_error(t.conv2d(x, w, None, 1, 1, with_cb(wide, 3)), "channel bias");
    let flat = t.input(Tensor::zeros(&[2, 75]));
    shape_error(t.conv2d(flat, w, None, 1, 1, ConvExtra::default()), "4-d");
    let wt = t.input(Tensor::zeros(&[2, 3, 4, 4]));
    shape_error(t.conv_transpose2d(x, wt, None, 2, 1), "does not fit");
    let g = t.input(Tensor::zeros(&[3]));
    shape_error(t.group_norm(x, g, g, 2, false), "do not split");
    let g4 = t.input(Tensor::zeros(&[4]));
    shape_error(t.group_norm(x, g4, g, 3, false), "group_norm weight");
    let lw = t.input(Tensor::zeros(&[4, 74]));
    shape_error(t.linear(flat, lw, None), "does not fit");
    let other = t.input(Tensor::zeros(&[2, 3, 4, 5]));
    shape_error(t.concat(x, other), "differ outside the channel dim");
    shape_error(t.mse(x, other), "differ");
}

#[test]
fn unet_rejects_wrong_inputs_and_configs() {
    let mut params = Params::new();
    let model =
        UNet::new(UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 }, &mut params, &mut StdRng::seed_from_u64(0))
            .unwrap();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::zeros(&[2, 3, 8, 8]));
    shape_error(model.forward(&mut t, x, &[1, 2]), "UNet");
    let x = t.input(Tensor::zeros(&[2, 1, 10, 8]));
    shape_error(model.forward(&mut t, x, &[1, 2]), "divisible by 4");
    let x = t.input(Tensor::zeros(&[2, 1, 8, 8]));
    shape_error(model.forward(&mut t, x, &[1]), "timesteps");
    let loss = t.input(Tensor::zeros(&[2]));
    shape_error(t.backward(loss), "one element");
    for cfg in [
        UNetConfig { in_ch: 1, base: 12, t_dim: 4, classes: 0 },
        UNetConfig { in_ch: 1, base: 8, t_dim: 5, classes: 0 },
    ] {
        assert!(matches!(UNet::new(cfg, &mut Params::new(), &mut StdRng::seed_from_u64(0)), Err(Error::Arg(_))));
    }
}

#[test]
fn loading_a_state_dict_checks_names_and_shapes() {
    let mut params = Params::new();
    UNet::new(UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 }, &mut params, &mut StdRng::seed_from_u64(0))
        .unwrap();
    let mut source: std::collections::HashMap<String, Tensor> =
        params.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    source.insert("in_conv.weight".into(), Tensor::zeros(&[8, 1, 5, 5]));
    let err = params.clone().load_from(&source, "x.safetensors").unwrap_err().to_string();
    assert!(err.contains("x.safetensors") && err.contains("in_conv.weight") && err.contains("shape"), "{err}");
    source.remove("in_conv.weight");
    let err = params.load_from(&source, "x.safetensors").unwrap_err().to_string();
    assert!(err.contains("missing tensor `in_conv.weight`"), "{err}");
}

#[test]
fn classifier_ops_and_model_reject_wrong_shapes() {
    let params = Params::new();
    let mut t = Tape::new(&params);
    let thin = t.input(Tensor::zeros(&[2, 3, 1, 5]));
    shape_error(t.max_pool2d(thin), "no 2x2 window");
    let flat = t.input(Tensor::zeros(&[6]));
    shape_error(t.max_pool2d(flat), "4-d");
    shape_error(t.flatten(flat), "at least 2 dimensions");
    let z = t.input(Tensor::zeros(&[3, 10]));
    shape_error(t.cross_entropy(z, &[1, 2]), "2 labels for 3 rows");
    shape_error(t.cross_entropy(z, &[1, 2, 10]), "label 10 out of range 0..10");
    shape_error(t.cross_entropy(thin, &[1, 2]), "2-d");
    let mut params = Params::new();
    let model = Classifier::new(&mut params, &mut StdRng::seed_from_u64(0));
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::zeros(&[2, 1, 28, 28]));
    shape_error(model.forward(&mut t, x), "expected images [n, 1, 32, 32]");
}
