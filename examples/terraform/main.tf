# Corral's guest kit managed by Terraform: two VMs booting its kernel, and a third that
# firmware-boots a volume cloned from the kit's BIOS-bootable disk image.
# See README.md beside this file for how to run it.

terraform {
  required_providers {
    corral = {
      source = "corral-vm/corral"
    }
  }
}

variable "socket" {
  description = "corrald's unix socket (null: CORRAL_SOCKET, else the default socket)."
  type        = string
  default     = null
}

variable "kit" {
  description = "Absolute path of the guest kit directory, e.g. /path/to/corral/target/guest/x86_64."
  type        = string
}

provider "corral" {
  endpoint = var.socket
}

resource "corral_vm" "web" {
  name    = "web-1"
  cpus    = 2
  memory  = "512M"
  kernel  = "${var.kit}/vmlinuz"
  initrd  = "${var.kit}/initrd.img"
  cmdline = "console=ttyS0 quiet"
  labels = {
    tier = "web"
  }

  timeouts {
    create = "3m"
  }
}

resource "corral_vm" "worker" {
  name    = "worker-1"
  memory  = "256M"
  kernel  = "${var.kit}/vmlinuz"
  initrd  = "${var.kit}/initrd.img"
  cmdline = "console=ttyS0 quiet"
  # Declared stopped: created, not started. Set "running" and apply to start it.
  power = "stopped"
  labels = {
    tier = "worker"
  }
}

# The kit's bootable disk, stored once by corrald (by its BLAKE3 digest).
resource "corral_image" "boot" {
  name = "kit-boot"
  path = "${var.kit}/boot.qcow2"
}

# A thin qcow2 clone of the image: grow `size` and apply to resize it in place.
resource "corral_volume" "root" {
  name  = "disk-1-root"
  image = corral_image.boot.name
  labels = {
    role = "boot"
  }
}

# Firmware (SeaBIOS on q35) boots the volume: syslinux, then the kit's kernel.
resource "corral_vm" "disk" {
  name        = "disk-1"
  machine     = "q35"
  memory      = "256M"
  boot_volume = corral_volume.root.name
}

# Reads a VM Terraform does not manage (here: the one above, once it exists).
data "corral_vm" "web" {
  name = corral_vm.web.name
}

output "web_uid" {
  value = corral_vm.web.uid
}

output "web_phase" {
  value = data.corral_vm.web.phase
}

output "web_accelerator" {
  value = corral_vm.web.accelerator
}

output "image_digest" {
  value = corral_image.boot.digest
}

output "root_volume_bytes" {
  value = corral_volume.root.actual_size
}
