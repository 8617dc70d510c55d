from robot.cli import main

main(prog_name="healthrobot")
