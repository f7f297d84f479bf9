//! The ingest UDP socket's kernel side: its receive buffer and the
//! datagrams the kernel dropped because that buffer was full.
//!
//! One socket carries every publisher, and each video frame arrives as a
//! burst of packets from every session at once: the kernel's default
//! receive buffer (208 KiB) overflowed at 25 two-user rooms here (1,141
//! datagrams lost in a minute, sessions ending in ICE timeouts), and none
//! of it showed in kiroku's own counters. So the buffer is raised, and the
//! kernel's drop count for the socket is exported.

use std::net::UdpSocket;

/// The receive buffer asked for. The kernel caps it at
/// `net.core.rmem_max` unless the process may force it (CAP_NET_ADMIN).
pub const RECEIVE_BUFFER: usize = 16 * 1024 * 1024;
/// Below this the buffer is too small for a busy box (a warning says so).
pub const RECEIVE_BUFFER_WARN: usize = 4 * 1024 * 1024;

/// Raises the receive buffer; returns the size the kernel granted (it
/// reports twice what it accounts as payload room).
pub fn raise_receive_buffer(socket: &UdpSocket) -> std::io::Result<usize> {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(socket, RECEIVE_BUFFER).is_err() {
        sockopt::set_socket_recv_buffer_size(socket, RECEIVE_BUFFER)?;
    }
    Ok(sockopt::socket_recv_buffer_size(socket)?)
}

/// Datagrams the kernel dropped for the UDP socket bound to `port`, from
/// `/proc/net/udp` and `/proc/net/udp6` (`None` where they cannot be read).
pub fn kernel_drops(port: u16) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            if let Some(d) = drops_in_table(&text, port) {
                found = Some(found.unwrap_or(0) + d);
            }
        }
    }
    found
}

/// The `drops` column of the rows whose local port is `port`.
pub fn drops_in_table(table: &str, port: u16) -> Option<u64> {
    let mut total = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = fields.get(1) else { continue };
        let Some((_, hex_port)) = local.rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hex_port, 16).ok() != Some(port) {
            continue;
        }
        if let Some(d) = fields.last().and_then(|d| d.parse::<u64>().ok()) {
            total = Some(total.unwrap_or(0) + d);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_of_the_socket_on_the_port_is_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:20FB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 2 0000000000000000 142884\n\
  2: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1235 2 0000000000000000 7\n";
        assert_eq!(drops_in_table(table, 8443), Some(142_884));
        assert_eq!(drops_in_table(table, 8080), Some(7));
        assert_eq!(drops_in_table(table, 9), None);
    }

    #[test]
    fn the_buffer_is_raised_and_a_bound_socket_is_found() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let granted = raise_receive_buffer(&socket).expect("setsockopt");
        // At least what the default gives (the cap depends on the host).
        assert!(granted >= 200_000, "{granted}");
        let port = socket.local_addr().expect("addr").port();
        assert_eq!(kernel_drops(port), Some(0));
    }
}
