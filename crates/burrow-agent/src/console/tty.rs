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
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &t)?;
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
