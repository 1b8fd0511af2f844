//! The eMMC settings of a run, on a target the board says is an eMMC: the
//! health gate before the first write (wear read from sysfs, a worn part
//! refused unless `flasher.health=off`; docs/factory.md) and, after the
//! bootloader is written, the EXT_CSD switch that makes the eMMC boot from its
//! boot partition (`emmc.boot_enable`). The reading and the ioctls are the
//! engine's (`flasher::emmc`); this is what the run does with them.

use flasher_format::cmdline::Options;
use flasher_format::Phase;

use crate::real::{missing, Real};

impl Real {
    /// The eMMC health gate (docs/factory.md): on an eMMC target, read its
    /// wear from sysfs for the record, and refuse it (before any write) when
    /// pre-EOL is urgent or a life-time estimate is past the board's limit,
    /// unless `flasher.health=off`. Other targets pass ungated.
    pub(crate) fn health_gate(&mut self, o: &Options) -> crate::Result<()> {
        use flasher::emmc::health;
        let name = self.identity.device.clone();
        if !health::is_emmc(&self.root, &name) {
            self.health = None;
            return Ok(());
        }
        let reading = health::read(&self.root, &name);
        let limit = self
            .board
            .as_ref()
            .map(boards::Board::life_time_limit_percent)
            .unwrap_or(boards::DEFAULT_LIFE_TIME_LIMIT_PERCENT);
        let verdict = health::assess(&reading, limit);
        self.health = Some(reading.health);
        self.note(
            Phase::Searching,
            format!("eMMC health of {name}: {}", verdict.summary),
        );
        for n in &verdict.notes {
            self.note(Phase::Searching, format!("eMMC health: {n}; passing"));
        }
        for w in &verdict.warnings {
            self.note(Phase::Searching, format!("warning: {w}"));
        }
        let Some(worn) = verdict.refusal else {
            return Ok(());
        };
        if !o.health {
            self.note(
                Phase::Searching,
                format!("warning: {worn}; flasher.health=off, so flashing it anyway"),
            );
            return Ok(());
        }
        Err(flasher::emmc::Error::Worn {
            device: name,
            identity: self.identity.to_string(),
            worn,
        }
        .into())
    }

    /// `emmc.boot_enable`: after the bootloader is on the eMMC, make it the
    /// partition the eMMC boots from (EXT_CSD PARTITION_CONFIG), read back.
    /// Runs before the table goes live, so a refusal leaves nothing bootable.
    pub(crate) fn enable_boot_partition(&mut self) -> crate::Result<()> {
        let Some(emmc) = self.board()?.emmc else {
            return Ok(());
        };
        let Some(enable) = emmc.boot_enable else {
            return Ok(());
        };
        let dev = self.target.clone().ok_or_else(|| missing("a target"))?;
        let mut regs = (self.ext_csd)(&dev).map_err(|source| flasher::emmc::Error::ExtCsdRead {
            device: dev.display().to_string(),
            source,
        })?;
        let c = flasher::emmc::ext_csd::enable_boot(&mut *regs, &dev, enable, emmc.boot_ack)?;
        let ack = if c.after & flasher::emmc::ext_csd::BOOT_ACK != 0 {
            "on"
        } else {
            "off"
        };
        let how = if c.before == c.after {
            "already set".to_string()
        } else {
            format!("0x{:02x} -> 0x{:02x}, read back", c.before, c.after)
        };
        self.note(
            Phase::Finishing,
            format!(
                "eMMC boots from {enable} (BOOT_ACK {ack}): PARTITION_CONFIG {how} on {}",
                dev.display()
            ),
        );
        Ok(())
    }
}
