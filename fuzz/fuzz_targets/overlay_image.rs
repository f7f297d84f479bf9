#![no_main]
// kiroku contains the JPEG decoder's panics (mix/overlay.rs: catch_unwind);
// libfuzzer-sys's panic hook would abort on those caught panics too, so a
// silent hook replaces it. A panic that escapes kiroku still aborts:
// libfuzzer-sys catches it at the boundary and reports the input.
static QUIET_CAUGHT_PANICS: std::sync::Once = std::sync::Once::new();
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    QUIET_CAUGHT_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    kiroku::fuzzing::overlay_image(data)
});
