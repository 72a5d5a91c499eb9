//! `daps sample` and `daps solve --method latent-daps` end to end with the tiny LDM-VQ fixture
//! (`--prior ldm:model.safetensors:daps_model_config.yaml`, 16×16 RGB images), and their errors.

mod common;

use common::{daps, fixture, s, tmp_dir};

fn ldm_spec() -> String {
    format!(
        "ldm:{}:{}",
        fixture("latent/ldm_vq4/model.safetensors").display(),
        fixture("latent/ldm_vq4/daps_model_config.yaml").display()
    )
}

/// A 16×16 RGB test image (the fixture's x_gt) as a PNG.
fn image(dir: &std::path::Path, side: usize) -> std::path::PathBuf {
    let x = common::load("latent/latent_daps_loop/loop.safetensors")["x_gt"].clone();
    let x = if side == 16 {
        x
    } else {
        x.pad_with_zeros(2, 0, side - 16)
            .unwrap()
            .pad_with_zeros(3, 0, side - 16)
            .unwrap()
    };
    let png = dir.join(format!("x{side}.png"));
    daps::io::write_image(&x.clamp(-1f32, 1f32).unwrap(), (-1.0, 1.0), &png).unwrap();
    png
}

fn measure(dir: &std::path::Path, png: &std::path::Path, task: &str) -> std::path::PathBuf {
    let y = dir.join(format!("y-{task}.safetensors"));
    let out = daps(&["measure", "--task", task, "--input", s(png), "--out", s(&y)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    y
}

#[test]
fn sample_decodes_latents() {
    let dir = tmp_dir("cli-latent", "sample");
    let out_png = dir.join("samples.png");
    let spec = ldm_spec();
    let out = daps(&[
        "sample",
        "--prior",
        &spec,
        "--n",
        "2",
        "--steps",
        "4",
        "--out",
        s(&out_png),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("LDM-VQ-f2") && out_png.is_file(), "{text}");
    // Two 16×16 images side by side (the decoded size, not the 8×8 latents).
    let img = image::open(&out_png).unwrap();
    assert!(
        img.height() >= 16 && img.width() >= 32,
        "{}×{}",
        img.width(),
        img.height()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn solve_runs_latent_daps_and_saves_decoded_frames() {
    let dir = tmp_dir("cli-latent", "solve");
    let png = image(&dir, 16);
    let spec = ldm_spec();
    for task in ["inpaint-box", "sr4-pool"] {
        let y = measure(&dir, &png, task);
        let x = dir.join(format!("x-{task}.png"));
        let frames = dir.join(format!("frames-{task}"));
        let out = daps(&[
            "solve",
            "--measurement",
            s(&y),
            "--method",
            "latent-daps",
            "--prior",
            &spec,
            "--set",
            "annealing_steps=3",
            "--set",
            "mcmc_steps=2",
            "--save-trajectory",
            s(&frames),
            "--reference",
            s(&png),
            "--out",
            s(&x),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{task}: {err}");
        assert!(err.contains("latent-daps 3 × 2 NFE, HMC 2 steps"), "{err}");
        let img = image::open(&x).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
        // Frames of the decoded x̂0 and x0 (16×16 images, not latents).
        let names: Vec<String> = std::fs::read_dir(&frames)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let hat = names
            .iter()
            .find(|n| n.starts_with("x0hat_"))
            .expect("x̂0 frames");
        let img = image::open(frames.join(hat)).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
    // A pixel-space method refuses the latent prior, naming the fix.
    let y = measure(&dir, &png, "inpaint-box");
    let out = daps(&[
        "solve",
        "--measurement",
        s(&y),
        "--method",
        "daps",
        "--prior",
        &spec,
        "--out",
        s(&dir.join("no.png")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--method latent-daps"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_the_problem() {
    let dir = tmp_dir("cli-latent", "errors");
    // An image size the autoencoder and UNet cannot take (18 is not a multiple of 4).
    let png = image(&dir, 18);
    let y = measure(&dir, &png, "inpaint-box");
    let spec = ldm_spec();
    let out = daps(&[
        "solve",
        "--measurement",
        s(&y),
        "--method",
        "latent-daps",
        "--prior",
        &spec,
        "--out",
        s(&dir.join("x.png")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("multiples of 4"),
        "{err}"
    );
    // A config that does not match the checkpoint.
    let yaml = std::fs::read_to_string(fixture("latent/ldm_vq4/daps_model_config.yaml")).unwrap();
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, yaml.replace("n_embed: 64", "n_embed: 128")).unwrap();
    let bad = format!(
        "ldm:{}:{}",
        fixture("latent/ldm_vq4/model.safetensors").display(),
        cfg.display()
    );
    let out = daps(&["sample", "--prior", &bad, "--out", s(&dir.join("s.png"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("quantize.embedding.weight")
            && err.contains("[128, 3]")
            && err.contains("[64, 3]"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `solve --method psld` on the tiny LDM for 16×16 inpainting (box and random mask): a finite
/// 16×16 image and its misfit reported; a pixel prior and a nonlinear task refused by name.
#[test]
fn solve_runs_psld_on_the_tiny_ldm() {
    let dir = tmp_dir("cli-latent", "psld");
    let png = image(&dir, 16);
    let spec = ldm_spec();
    for task in ["inpaint-box", "inpaint-random"] {
        let y = measure(&dir, &png, task);
        let x = dir.join(format!("x-{task}.png"));
        let out = daps(&[
            "solve",
            "--measurement",
            s(&y),
            "--method",
            "psld",
            "--prior",
            &spec,
            "--set",
            "steps=5",
            "--out",
            s(&x),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{task}: {err}");
        assert!(err.contains("psld 5 DDIM steps"), "{err}");
        assert!(text.contains("‖A(x) − y‖: mean"), "{text}");
        let img = image::open(&x).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
    let y = measure(&dir, &png, "hdr");
    let out = daps(&[
        "solve",
        "--measurement",
        s(&y),
        "--method",
        "psld",
        "--prior",
        &spec,
        "--out",
        s(&dir.join("no.png")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("psld needs a linear operator"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `solve --method resample` on the tiny LDM (short run: 30 DDIM steps, two pixel-stage
/// ReSample steps, capped optimisations) for random inpainting and HDR (nonlinear): a 16×16
/// image; a pixel prior refused by name before any sampling.
#[test]
fn solve_runs_resample_on_the_tiny_ldm() {
    let dir = tmp_dir("cli-latent", "resample");
    let png = image(&dir, 16);
    let spec = ldm_spec();
    for task in ["inpaint-random", "hdr"] {
        let y = measure(&dir, &png, task);
        let x = dir.join(format!("x-{task}.png"));
        let out = daps(&[
            "solve",
            "--measurement",
            s(&y),
            "--method",
            "resample",
            "--prior",
            &spec,
            "--set",
            "steps=30",
            "--set",
            "pixel_iters=50",
            "--set",
            "latent_iters=20",
            "--out",
            s(&x),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{task}: {err}");
        assert!(
            err.contains("resample 30 DDIM steps") && err.contains("+ 10 look-ahead NFE"),
            "{err}"
        );
        assert!(text.contains("‖A(x) − y‖: mean"), "{text}");
        let img = image::open(&x).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
    // The built-in digits prior (pixel space, 1×32×32) on a 32×32 grey measurement.
    let grey = common::load("latent/latent_daps_loop/loop.safetensors")["x_gt"]
        .mean_keepdim(1)
        .unwrap()
        .pad_with_zeros(2, 0, 16)
        .unwrap()
        .pad_with_zeros(3, 0, 16)
        .unwrap();
    let gpng = dir.join("grey.png");
    daps::io::write_image(&grey.clamp(-1f32, 1f32).unwrap(), (-1.0, 1.0), &gpng).unwrap();
    let y = measure(&dir, &gpng, "inpaint-box");
    let out = daps(&[
        "solve",
        "--measurement",
        s(&y),
        "--method",
        "resample",
        "--out",
        s(&dir.join("no.png")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("resample needs a latent diffusion prior"),
        "{err}"
    );
    assert!(!dir.join("no.png").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
