//! Which IP addresses an outbound request (an image download, a webhook) may reach
//! without its host being named explicitly: public unicast addresses only. The
//! edge component checks the addresses it can see (literal IPs in URLs) and the
//! local runtime checks every address a name resolves to; both ask this table.
//!
//! The table is IANA's IPv4 and IPv6 Special-Purpose Address Registries (every row,
//! as of 2025: RFC 6890 and its updates), plus the ranges of the address-space
//! registries that are not unicast (multicast, IPv4's class E, IPv6's deprecated
//! site-local). A row the registry marks "globally reachable" is public; every
//! other row is not. Addresses that embed an IPv4 address are judged by it where
//! they reach it (IPv4-mapped, NAT64's well-known prefix) and refused where they
//! are transition mechanisms a request has no business using (IPv4-compatible,
//! IPv4-translated, 6to4, Teredo, local-use NAT64).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One registry row: network, prefix length, what it is, and whether the registry
/// calls it globally reachable.
struct Row {
    /// IPv4 rows hold the address in the low 32 bits.
    net: u128,
    len: u8,
    name: &'static str,
    global: bool,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str, global: bool) -> Row {
    Row {
        net: u32::from_be_bytes([a, b, c, d]) as u128,
        len,
        name,
        global,
    }
}

const fn v6(s: [u16; 8], len: u8, name: &'static str, global: bool) -> Row {
    let mut net = 0u128;
    let mut i = 0;
    while i < 8 {
        net = (net << 16) | s[i] as u128;
        i += 1;
    }
    Row {
        net,
        len,
        name,
        global,
    }
}

/// IANA IPv4 Special-Purpose Address Registry, and the non-unicast space.
const V4: &[Row] = &[
    v4(0, 0, 0, 0, 8, "a \"this network\" address", false),
    v4(
        0,
        0,
        0,
        0,
        32,
        "the \"this host on this network\" address",
        false,
    ),
    v4(10, 0, 0, 0, 8, "a private-use address", false),
    v4(
        100,
        64,
        0,
        0,
        10,
        "a shared (carrier-grade NAT) address",
        false,
    ),
    v4(127, 0, 0, 0, 8, "a loopback address", false),
    v4(
        169,
        254,
        0,
        0,
        16,
        "a link-local (cloud metadata) address",
        false,
    ),
    v4(172, 16, 0, 0, 12, "a private-use address", false),
    v4(192, 0, 0, 0, 24, "an IETF protocol assignment", false),
    v4(
        192,
        0,
        0,
        0,
        29,
        "an IPv4 service continuity address",
        false,
    ),
    v4(192, 0, 0, 8, 32, "the IPv4 dummy address", false),
    v4(192, 0, 0, 9, 32, "the PCP anycast address", true),
    v4(192, 0, 0, 10, 32, "the TURN anycast address", true),
    v4(192, 0, 0, 170, 32, "a NAT64/DNS64 discovery address", false),
    v4(192, 0, 0, 171, 32, "a NAT64/DNS64 discovery address", false),
    v4(
        192,
        0,
        2,
        0,
        24,
        "a documentation address (TEST-NET-1)",
        false,
    ),
    v4(192, 31, 196, 0, 24, "an AS112 address", true),
    v4(192, 52, 193, 0, 24, "an AMT address", true),
    v4(
        192,
        88,
        99,
        0,
        24,
        "a deprecated 6to4 relay anycast address",
        false,
    ),
    v4(192, 168, 0, 0, 16, "a private-use address", false),
    v4(
        192,
        175,
        48,
        0,
        24,
        "an AS112 direct delegation address",
        true,
    ),
    v4(198, 18, 0, 0, 15, "a benchmarking address", false),
    v4(
        198,
        51,
        100,
        0,
        24,
        "a documentation address (TEST-NET-2)",
        false,
    ),
    v4(
        203,
        0,
        113,
        0,
        24,
        "a documentation address (TEST-NET-3)",
        false,
    ),
    v4(224, 0, 0, 0, 4, "a multicast address", false),
    v4(240, 0, 0, 0, 4, "a reserved address", false),
    v4(
        255,
        255,
        255,
        255,
        32,
        "the limited broadcast address",
        false,
    ),
];

/// IANA IPv6 Special-Purpose Address Registry, and the non-unicast space.
const V6: &[Row] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "a loopback address", false),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        128,
        "the unspecified address",
        false,
    ),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        96,
        "an IPv4-compatible address (deprecated)",
        false,
    ),
    v6(
        [0, 0, 0, 0, 0, 0xffff, 0, 0],
        96,
        "an IPv4-mapped address",
        false,
    ),
    v6(
        [0, 0, 0, 0, 0xffff, 0, 0, 0],
        96,
        "an IPv4-translated address",
        false,
    ),
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "a NAT64 address",
        true,
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "a local-use NAT64 address",
        false,
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "a discard-only address",
        false,
    ),
    v6(
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "a dummy IPv6 prefix address",
        false,
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "an IETF protocol assignment",
        false,
    ),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo address", false),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 1],
        128,
        "the PCP anycast address",
        true,
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 2],
        128,
        "the TURN anycast address",
        true,
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 3],
        128,
        "the DNS-SD SRP anycast address",
        true,
    ),
    v6(
        [0x2001, 2, 0, 0, 0, 0, 0, 0],
        48,
        "a benchmarking address",
        false,
    ),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "an AMT address", true),
    v6(
        [0x2001, 4, 0x112, 0, 0, 0, 0, 0],
        48,
        "an AS112 address",
        true,
    ),
    v6(
        [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
        28,
        "a deprecated ORCHID address",
        false,
    ),
    v6(
        [0x2001, 0x20, 0, 0, 0, 0, 0, 0],
        28,
        "an ORCHIDv2 address",
        true,
    ),
    v6(
        [0x2001, 0x30, 0, 0, 0, 0, 0, 0],
        28,
        "a drone remote ID address",
        true,
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "a documentation address",
        false,
    ),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "a 6to4 address", false),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "an AS112 direct delegation address",
        true,
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "a documentation address",
        false,
    ),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "a segment routing SID",
        false,
    ),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "a unique-local (private) address",
        false,
    ),
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "a link-local address",
        false,
    ),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "a site-local address (deprecated)",
        false,
    ),
    v6(
        [0xff00, 0, 0, 0, 0, 0, 0, 0],
        8,
        "a multicast address",
        false,
    ),
];

/// Whether `ip` (of `bits` bits) is in `row`'s network.
fn holds(row: &Row, ip: u128, bits: u32) -> bool {
    let shift = bits - u32::from(row.len);
    shift >= 128 || ip >> shift == row.net >> shift
}

/// The most specific row holding `ip`, if any.
fn lookup(rows: &[Row], ip: u128, bits: u32) -> Option<&Row> {
    rows.iter()
        .filter(|r| holds(r, ip, bits))
        .max_by_key(|r| r.len)
}

/// Why `ip` may not be reached unless its host is named explicitly (the registry
/// row it falls in), or None for a public unicast address.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    special(ip).is_none()
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    lookup(V4, u128::from(u32::from(ip)), 32)
        .filter(|r| !r.global)
        .map(|r| r.name)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let row = lookup(V6, bits, 128)?;
    let embedded = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    match row.name {
        // They reach the IPv4 address inside: judged by it.
        "an IPv4-mapped address" | "a NAT64 address" => special_v4(embedded),
        _ if row.global => None,
        name => Some(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str) -> Option<&'static str> {
        special(text.parse().unwrap())
    }

    /// Every registry row: an address inside it, and whether it is public.
    #[test]
    fn every_row_of_the_registries() {
        let public = None;
        for (addr, want) in [
            ("0.1.2.3", Some("a \"this network\" address")),
            ("0.0.0.0", Some("the \"this host on this network\" address")),
            ("10.1.2.3", Some("a private-use address")),
            ("100.64.0.1", Some("a shared (carrier-grade NAT) address")),
            (
                "100.127.255.254",
                Some("a shared (carrier-grade NAT) address"),
            ),
            ("127.0.0.1", Some("a loopback address")),
            (
                "169.254.169.254",
                Some("a link-local (cloud metadata) address"),
            ),
            ("172.16.0.1", Some("a private-use address")),
            ("172.31.255.255", Some("a private-use address")),
            ("192.0.0.200", Some("an IETF protocol assignment")),
            ("192.0.0.5", Some("an IPv4 service continuity address")),
            ("192.0.0.8", Some("the IPv4 dummy address")),
            ("192.0.0.9", public),
            ("192.0.0.10", public),
            ("192.0.0.170", Some("a NAT64/DNS64 discovery address")),
            ("192.0.0.171", Some("a NAT64/DNS64 discovery address")),
            ("192.0.2.1", Some("a documentation address (TEST-NET-1)")),
            ("192.31.196.1", public),
            ("192.52.193.1", public),
            (
                "192.88.99.1",
                Some("a deprecated 6to4 relay anycast address"),
            ),
            ("192.168.1.1", Some("a private-use address")),
            ("192.175.48.1", public),
            ("198.18.0.1", Some("a benchmarking address")),
            ("198.19.255.255", Some("a benchmarking address")),
            ("198.51.100.1", Some("a documentation address (TEST-NET-2)")),
            ("203.0.113.1", Some("a documentation address (TEST-NET-3)")),
            ("224.0.0.1", Some("a multicast address")),
            ("240.0.0.1", Some("a reserved address")),
            ("255.255.255.255", Some("the limited broadcast address")),
            ("8.8.8.8", public),
            ("172.32.0.1", public),
            ("100.128.0.1", public),
            ("::1", Some("a loopback address")),
            ("::", Some("the unspecified address")),
            (
                "::10.0.0.1",
                Some("an IPv4-compatible address (deprecated)"),
            ),
            ("::8.8.8.8", Some("an IPv4-compatible address (deprecated)")),
            ("::ffff:127.0.0.1", Some("a loopback address")),
            ("::ffff:8.8.8.8", public),
            ("::ffff:0:8.8.8.8", Some("an IPv4-translated address")),
            ("64:ff9b::a00:1", Some("a private-use address")),
            ("64:ff9b::808:808", public),
            ("64:ff9b:1::808:808", Some("a local-use NAT64 address")),
            ("100::1", Some("a discard-only address")),
            ("100:0:0:1::1", Some("a dummy IPv6 prefix address")),
            ("2001:100::1", Some("an IETF protocol assignment")),
            ("2001::1", Some("a Teredo address")),
            ("2001:1::1", public),
            ("2001:1::2", public),
            ("2001:1::3", public),
            ("2001:1::4", Some("an IETF protocol assignment")),
            ("2001:2::1", Some("a benchmarking address")),
            ("2001:3::1", public),
            ("2001:4:112::1", public),
            ("2001:10::1", Some("a deprecated ORCHID address")),
            ("2001:20::1", public),
            ("2001:30::1", public),
            ("2001:db8::1", Some("a documentation address")),
            ("2002:a00:1::1", Some("a 6to4 address")),
            ("2002:808:808::1", Some("a 6to4 address")),
            ("2620:4f:8000::1", public),
            ("3fff::1", Some("a documentation address")),
            ("5f00::1", Some("a segment routing SID")),
            ("fd00:ec2::254", Some("a unique-local (private) address")),
            ("fc00::1", Some("a unique-local (private) address")),
            ("fe80::1", Some("a link-local address")),
            ("fec0::1", Some("a site-local address (deprecated)")),
            ("ff02::1", Some("a multicast address")),
            ("2606:4700::1111", public),
            ("2a00:1450:4001::1", public),
        ] {
            assert_eq!(verdict(addr), want, "{addr}");
        }
    }

    #[test]
    fn rows_are_networks() {
        // No bits set past the prefix length.
        for (rows, bits) in [(V4, 32u32), (V6, 128)] {
            for r in rows {
                let host_bits = bits - u32::from(r.len);
                assert!(u32::from(r.len) <= bits, "{}", r.name);
                if host_bits > 0 {
                    assert_eq!(r.net & ((1u128 << host_bits) - 1), 0, "{}", r.name);
                }
            }
        }
    }
}
