//! Real serial ports: a Linux terminal opened exclusively, raw, non-blocking, driven by epoll.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::path::Path;

use burrow_proto::serial::{FlowControl, LineSettings, Parity};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{ControlModes, InputModes, OptionalActions};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::port::{OpenPort, PortOpener, SerialControl};

/// Opens real terminals.
pub struct TtyOpener;

impl PortOpener for TtyOpener {
    fn open(&self, path: &Path, settings: &LineSettings) -> io::Result<OpenPort> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Exclusive: a second opener (another agent, a stray `cu`) gets EBUSY.
        rustix::termios::ioctl_tiocexcl(&fd)?;
        configure(&fd, settings)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // as long as it is registered.
        let fd = Arc::new(unsafe { AsyncFd::register(fd) }?);
        Ok(OpenPort {
            reader: Box::new(TtyIo(fd.clone())),
            writer: Box::new(TtyIo(fd.clone())),
            control: Box::new(TtyControl(fd)),
        })
    }
}

fn configure(fd: &OwnedFd, c: &LineSettings) -> io::Result<()> {
    let mut t = rustix::termios::tcgetattr(fd)?;
    line_termios(&mut t, c)?;
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &t)?;
    Ok(())
}

/// Sets `t` raw with the line settings `c` (kept apart from the descriptor: a pty, which the
/// tests use, forces 8 data bits and no parity whatever it is given).
fn line_termios(t: &mut rustix::termios::Termios, c: &LineSettings) -> io::Result<()> {
    t.make_raw();
    t.set_speed(c.baud)?;
    let size = match c.data_bits {
        5 => ControlModes::CS5,
        6 => ControlModes::CS6,
        7 => ControlModes::CS7,
        _ => ControlModes::CS8,
    };
    t.control_modes -=
        ControlModes::CSIZE | ControlModes::PARENB | ControlModes::PARODD | ControlModes::CMSPAR;
    t.control_modes -= ControlModes::CSTOPB | ControlModes::CRTSCTS | ControlModes::HUPCL;
    t.control_modes |= size | ControlModes::CLOCAL | ControlModes::CREAD;
    match c.parity {
        Parity::None => {}
        Parity::Odd => t.control_modes |= ControlModes::PARENB | ControlModes::PARODD,
        Parity::Even => t.control_modes |= ControlModes::PARENB,
        // Stick parity: CMSPAR with PARODD sends the bit set, without it clear.
        Parity::Mark => {
            t.control_modes |= ControlModes::PARENB | ControlModes::CMSPAR | ControlModes::PARODD;
        }
        Parity::Space => t.control_modes |= ControlModes::PARENB | ControlModes::CMSPAR,
    }
    if c.stop_bits == 2 {
        t.control_modes |= ControlModes::CSTOPB;
    }
    t.input_modes -= InputModes::IXON | InputModes::IXOFF;
    match c.flow {
        FlowControl::None => {}
        FlowControl::Software => t.input_modes |= InputModes::IXON | InputModes::IXOFF,
        FlowControl::Hardware => t.control_modes |= ControlModes::CRTSCTS,
    }
    Ok(())
}

struct TtyIo(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for TtyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for TtyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct TtyControl(Arc<AsyncFd<OwnedFd>>);

impl SerialControl for TtyControl {
    fn set_baud(&mut self, baud: u32) -> io::Result<()> {
        let fd = self.0.get_ref();
        let mut t = rustix::termios::tcgetattr(fd)?;
        t.set_speed(baud)?;
        rustix::termios::tcsetattr(fd, OptionalActions::Drain, &t)?;
        Ok(())
    }

    fn set_break(&mut self, on: bool) -> io::Result<()> {
        let request = if on { libc::TIOCSBRK } else { libc::TIOCCBRK };
        let fd = self.0.get_ref().as_fd().as_raw_fd();
        // SAFETY: TIOCSBRK and TIOCCBRK take no argument and only act on the descriptor, which
        // stays open for the duration of the call (borrowed from the AsyncFd we hold).
        let rc = unsafe { libc::ioctl(fd, request) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_line(&mut self, settings: &LineSettings) -> io::Result<()> {
        configure(self.0.get_ref(), settings)
    }

    fn set_modem(&mut self, dtr: bool, rts: bool) -> io::Result<()> {
        let fd = self.0.get_ref().as_fd().as_raw_fd();
        for (bit, on) in [(libc::TIOCM_DTR, dtr), (libc::TIOCM_RTS, rts)] {
            let request = if on { libc::TIOCMBIS } else { libc::TIOCMBIC };
            let bits: libc::c_int = bit;
            // SAFETY: TIOCMBIS/TIOCMBIC read one int through the pointer, which points at a
            // local that lives through the call; the descriptor is borrowed from the AsyncFd.
            let rc = unsafe { libc::ioctl(fd, request, &bits as *const libc::c_int) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::serial::parse_changes;

    /// A terminal's attributes to start from (those of a fresh pty).
    fn fresh() -> rustix::termios::Termios {
        let master =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        rustix::termios::tcgetattr(&master).expect("tcgetattr")
    }

    fn with(words: &[&str]) -> rustix::termios::Termios {
        let mut c = LineSettings::default();
        for change in parse_changes(words).expect("settings") {
            c.apply(&change);
        }
        let mut t = fresh();
        line_termios(&mut t, &c).expect("termios");
        t
    }

    #[test]
    fn every_data_bits_parity_stop_bits_and_flow_setting_reaches_the_termios() {
        let t = with(&["7E2", "flow=xon-xoff", "19200"]);
        let cm = t.control_modes;
        assert_eq!(cm & ControlModes::CSIZE, ControlModes::CS7);
        assert!(cm.contains(ControlModes::PARENB | ControlModes::CSTOPB));
        assert!(
            !cm.intersects(ControlModes::PARODD | ControlModes::CMSPAR | ControlModes::CRTSCTS)
        );
        assert!(t.input_modes.contains(InputModes::IXON | InputModes::IXOFF));
        assert_eq!(t.output_speed(), 19200);
        let cm = with(&["5O1"]).control_modes;
        assert_eq!(cm & ControlModes::CSIZE, ControlModes::CS5);
        assert!(cm.contains(ControlModes::PARENB | ControlModes::PARODD));
        assert!(!cm.contains(ControlModes::CSTOPB));
        let cm = with(&["6M1"]).control_modes;
        assert_eq!(cm & ControlModes::CSIZE, ControlModes::CS6);
        assert!(cm.contains(ControlModes::PARENB | ControlModes::CMSPAR | ControlModes::PARODD));
        let cm = with(&["8S1", "flow=rts-cts"]).control_modes;
        assert!(cm.contains(ControlModes::PARENB | ControlModes::CMSPAR | ControlModes::CRTSCTS));
        assert!(!cm.contains(ControlModes::PARODD));
        let t = with(&["8N1"]);
        assert_eq!(t.control_modes & ControlModes::CSIZE, ControlModes::CS8);
        assert!(
            !t.control_modes
                .intersects(ControlModes::PARENB | ControlModes::CSTOPB)
        );
        assert!(
            !t.input_modes
                .intersects(InputModes::IXON | InputModes::IXOFF)
        );
    }
}
