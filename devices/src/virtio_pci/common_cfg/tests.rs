use super::*;

const FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << 1) | (1 << 9);

fn cfg() -> CommonConfig {
    CommonConfig::new(FEATURES, 3, 256, 4)
}

fn r(c: &CommonConfig, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn w(c: &mut CommonConfig, off: u64, len: usize, v: u64) -> Action {
    c.write(off, &v.to_le_bytes()[..len])
}

/// A config whose driver acked VERSION_1 alone and set ACKNOWLEDGE, DRIVER
/// and FEATURES_OK.
fn features_ok() -> CommonConfig {
    let mut c = cfg();
    w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
    w(&mut c, DRIVER_FEATURE, 4, 1);
    w(&mut c, DEVICE_STATUS, 1, 0x0b);
    c
}

#[test]
fn feature_select_windows() {
    let mut c = cfg();
    assert_eq!(r(&c, DEVICE_FEATURE, 4), FEATURES & 0xffff_ffff);
    w(&mut c, DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(r(&c, DEVICE_FEATURE_SELECT, 4), 1);
    assert_eq!(r(&c, DEVICE_FEATURE, 4), 1);
    w(&mut c, DEVICE_FEATURE_SELECT, 4, 0xffff_ffff);
    assert_eq!(r(&c, DEVICE_FEATURE, 4), 0, "windows past 1 are empty");
    // device_feature is read-only.
    w(&mut c, DEVICE_FEATURE, 4, 0xffff_ffff);
    w(&mut c, DEVICE_FEATURE_SELECT, 4, 0);
    assert_eq!(r(&c, DEVICE_FEATURE, 4), FEATURES & 0xffff_ffff);

    w(&mut c, DRIVER_FEATURE_SELECT, 4, 0);
    w(&mut c, DRIVER_FEATURE, 4, 0x202);
    w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
    w(&mut c, DRIVER_FEATURE, 4, 1);
    w(&mut c, DRIVER_FEATURE_SELECT, 4, 7);
    w(&mut c, DRIVER_FEATURE, 4, 0xffff_ffff);
    assert_eq!(r(&c, DRIVER_FEATURE, 4), 0);
    assert_eq!(c.driver_features(), FEATURES);
    w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(r(&c, DRIVER_FEATURE, 4), 1);
}

#[test]
fn features_ok_requires_subset_and_version_1() {
    let mut c = cfg();
    w(&mut c, DRIVER_FEATURE, 4, 1 << 5); // not offered
    w(&mut c, DEVICE_STATUS, 1, 0x0b);
    assert_eq!(c.status(), 0x03, "FEATURES_OK refused");
    let mut c = cfg();
    w(&mut c, DRIVER_FEATURE, 4, 0x2); // no VERSION_1
    w(&mut c, DEVICE_STATUS, 1, 0x0b);
    assert_eq!(c.status() & STATUS_FEATURES_OK, 0);
    let mut c = features_ok();
    assert_eq!(c.status(), 0x0b);
    // Features are frozen after FEATURES_OK.
    w(&mut c, DRIVER_FEATURE, 4, 0);
    assert_eq!(c.driver_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn status_bits_accumulate_and_zero_resets() {
    let mut c = cfg();
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 1), Action::None);
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 2), Action::None);
    assert_eq!(c.status(), 3, "bits are never cleared by the driver");
    // The driver cannot set DEVICE_NEEDS_RESET or undefined bits.
    w(&mut c, DEVICE_STATUS, 1, 0x73);
    assert_eq!(c.status(), 3);
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0x80), Action::None);
    assert_eq!(c.status(), 0x83);
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0), Action::Reset);
    // A 4-byte write at 0x14 also writes config_generation (read-only) and
    // is still a status write.
    assert_eq!(w(&mut c, DEVICE_STATUS, 2, 0xff00), Action::Reset);
}

#[test]
fn driver_ok_activates_only_after_features_ok() {
    let mut c = cfg();
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0x07), Action::Fail);
    let mut c = features_ok();
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0x0f), Action::Activate);
    assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0x0f), Action::None, "only once");
}

#[test]
fn reset_restores_defaults_but_keeps_generation() {
    let mut c = cfg();
    w(&mut c, QUEUE_SELECT, 2, 1);
    w(&mut c, QUEUE_SIZE, 2, 16);
    w(&mut c, QUEUE_ENABLE, 2, 1);
    w(&mut c, MSIX_CONFIG, 2, 0);
    c.bump_generation();
    c.reset();
    assert_eq!(r(&c, QUEUE_SELECT, 2), 0);
    w(&mut c, QUEUE_SELECT, 2, 1);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 256);
    assert_eq!(r(&c, QUEUE_ENABLE, 2), 0);
    assert_eq!(r(&c, MSIX_CONFIG, 2), u64::from(MSIX_NO_VECTOR));
    assert_eq!(r(&c, CONFIG_GENERATION, 1), 1);
}

#[test]
fn queue_size_rules() {
    let mut c = cfg();
    assert_eq!(r(&c, NUM_QUEUES, 2), 3);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 256, "starts at the maximum");
    for bad in [0, 512, 100, 0xffff] {
        w(&mut c, QUEUE_SIZE, 2, bad);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256, "size {bad} refused");
    }
    w(&mut c, QUEUE_SIZE, 2, 64);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 64);
    // Packed rings lift the power-of-two rule.
    let mut c = CommonConfig::new(FEATURES | VIRTIO_F_RING_PACKED, 1, 256, 1);
    w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
    w(
        &mut c,
        DRIVER_FEATURE,
        4,
        (VIRTIO_F_RING_PACKED | VIRTIO_F_VERSION_1) >> 32,
    );
    w(&mut c, QUEUE_SIZE, 2, 100);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 100);
}

#[test]
fn queue_registers_and_out_of_range_select() {
    let mut c = cfg();
    w(&mut c, QUEUE_SELECT, 2, 2);
    assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 2);
    w(&mut c, QUEUE_DESC, 8, 0x1_0000_1000);
    w(&mut c, QUEUE_DRIVER, 4, 0x2000);
    w(&mut c, QUEUE_DRIVER + 4, 4, 0x1);
    w(&mut c, QUEUE_DEVICE, 8, 0x3000);
    w(&mut c, QUEUE_MSIX_VECTOR, 2, 3);
    assert_eq!(r(&c, QUEUE_DESC, 8), 0x1_0000_1000);
    assert_eq!(r(&c, QUEUE_DRIVER, 8), 0x1_0000_2000);
    assert_eq!(r(&c, QUEUE_DRIVER + 4, 4), 1);
    assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), 3);
    // A vector past the table reads back as NO_VECTOR.
    w(&mut c, QUEUE_MSIX_VECTOR, 2, 4);
    assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), u64::from(MSIX_NO_VECTOR));
    w(&mut c, MSIX_CONFIG, 2, 9);
    assert_eq!(r(&c, MSIX_CONFIG, 2), u64::from(MSIX_NO_VECTOR));
    w(&mut c, QUEUE_MSIX_VECTOR, 2, 1);

    w(&mut c, QUEUE_SELECT, 2, 3);
    assert_eq!(r(&c, QUEUE_SELECT, 2), 3);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 0, "no such queue");
    assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), u64::from(MSIX_NO_VECTOR));
    for (off, len) in [
        (QUEUE_SIZE, 2),
        (QUEUE_ENABLE, 2),
        (QUEUE_DESC, 8),
        (QUEUE_MSIX_VECTOR, 2),
    ] {
        w(&mut c, off, len, 1);
        assert_eq!(
            r(&c, off, len),
            if off == QUEUE_MSIX_VECTOR { 0xffff } else { 0 }
        );
    }
    w(&mut c, QUEUE_SELECT, 2, 0xffff);
    assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 0);
    assert_eq!(c.queue_vector(0xffff), MSIX_NO_VECTOR);
    assert_eq!(c.queue_vector(2), 1);
}

#[test]
fn enabled_queue_is_locked() {
    let mut c = cfg();
    w(&mut c, QUEUE_SELECT, 2, 1);
    w(&mut c, QUEUE_SIZE, 2, 32);
    w(&mut c, QUEUE_DESC, 8, 0x1000);
    w(&mut c, QUEUE_ENABLE, 2, 2); // only 1 enables
    assert_eq!(r(&c, QUEUE_ENABLE, 2), 0);
    w(&mut c, QUEUE_ENABLE, 2, 1);
    assert_eq!(r(&c, QUEUE_ENABLE, 2), 1);
    w(&mut c, QUEUE_ENABLE, 2, 0);
    w(&mut c, QUEUE_SIZE, 2, 64);
    w(&mut c, QUEUE_DESC, 8, 0x9000);
    assert_eq!(r(&c, QUEUE_ENABLE, 2), 1, "0 is not a valid write");
    assert_eq!((r(&c, QUEUE_SIZE, 2), r(&c, QUEUE_DESC, 8)), (32, 0x1000));
    let q = c.enabled_queues();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].index, q[0].size, q[0].desc_table), (1, 32, 0x1000));
    assert_eq!(q[0].msix_vector, MSIX_NO_VECTOR);
}

#[test]
fn queue_setup_is_frozen_after_driver_ok() {
    let mut c = features_ok();
    w(&mut c, DEVICE_STATUS, 1, 0x0f);
    w(&mut c, QUEUE_SELECT, 2, 2);
    w(&mut c, QUEUE_SIZE, 2, 16);
    w(&mut c, QUEUE_ENABLE, 2, 1);
    assert_eq!((r(&c, QUEUE_SIZE, 2), r(&c, QUEUE_ENABLE, 2)), (256, 0));
    // queue_select and msix_config stay writable.
    assert_eq!(r(&c, QUEUE_SELECT, 2), 2);
    w(&mut c, MSIX_CONFIG, 2, 0);
    assert_eq!(r(&c, MSIX_CONFIG, 2), 0);
}

#[test]
fn odd_sized_and_misaligned_accesses() {
    let mut c = cfg();
    // One byte of queue_select.
    w(&mut c, QUEUE_SELECT, 1, 2);
    assert_eq!(r(&c, QUEUE_SELECT, 2), 2);
    w(&mut c, QUEUE_SELECT + 1, 1, 1);
    assert_eq!(r(&c, QUEUE_SELECT, 2), 0x102);
    w(&mut c, QUEUE_SELECT, 2, 0);
    // A dword spanning queue_select and queue_size.
    w(&mut c, QUEUE_SELECT, 4, 0x0010_0001);
    assert_eq!(r(&c, QUEUE_SELECT, 2), 1);
    assert_eq!(r(&c, QUEUE_SIZE, 2), 16);
    // Reads straddling fields and the end of the file.
    assert_eq!(r(&c, 0x15, 2), 0x0100);
    assert_eq!(r(&c, COMMON_CFG_LEN - 2, 4), 0);
    assert_eq!(r(&c, u64::MAX, 8), 0);
    assert_eq!(w(&mut c, COMMON_CFG_LEN, 8, u64::MAX), Action::None);
    assert_eq!(w(&mut c, u64::MAX - 2, 8, u64::MAX), Action::None);
    c.write(0, &[]);
    // A 16-byte write covers four fields and does not panic.
    c.write(0, &[0xff; 16]);
    assert_eq!(r(&c, DEVICE_FEATURE_SELECT, 4), 0xffff_ffff);
}
